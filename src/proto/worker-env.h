/* worker-env: the environment variables corrald sets for every worker
 * (SPEC §3). Neither the config's `env` nor corrald's own environment may
 * supply them. Pure. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

/* Whether the variable named by the first len bytes of name is one corrald
 * sets itself for each worker. */
bool worker_env_is_reserved(const char *name, size_t len);
