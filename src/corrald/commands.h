/* commands: the control socket's requests, executed against the Manager
 * (docs/internals/control-protocol.md). The transport is control.c. */
#pragma once

#include "control.h"

/* ControlHandler for the manager (userdata is the Manager). */
void commands_dispatch(void *userdata, ControlConn *c, const cJSON *req);
