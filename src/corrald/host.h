/* host: the Pool's host in corrald (SlotOps, slot.h). Starts a worker with
 * the full contract of SPEC §3 through spawn.c, and owns what the master
 * keeps open for it (WorkerIo): the IPC channel (CORRAL_IPC_FD), with
 * hand-off the worker's end of it too, and in stderr log mode the pipe its
 * output comes through. What arrives on the channel goes to the worker's
 * slot (notify lines, Node's cluster protocol), to the hand-off (close
 * reports, fd limits) or to messages.c (messages).
 *
 * It knows the manager's parts it serves only through Host, never the
 * Manager itself. */
#pragma once

#include <uv.h>

#include "handoff.h"
#include "listener.h"
#include "messages.h"
#include "notify-server.h"
#include "slot.h"

typedef struct Host {
        uv_loop_t *loop;
        ListenerSet *listeners;        /* given to workers in shared balance; Node workers share their data */
        const NotifyServer *notify;    /* its path is each worker's NOTIFY_SOCKET */
        Handoff *handoff;              /* started: workers get no listening fds, and the channel carries
                                        * hand-offs, close reports and fd-limit reports */
        Messages *messages;            /* where the workers' message lines go */
} Host;

/* The SlotOps of corrald; the Pool's ops_data is a Host. */
extern const SlotOps host_slot_ops;

/* Upgrade: the fds the master holds for w (-EBADF when none: its channel,
 * the worker's end of it kept for hand-offs, its output pipe). */
void host_worker_fds(const Worker *w, int *ret_ipc, int *ret_peer, int *ret_output);
/* Upgrade: give an adopted worker its I/O again (takes every fd, even on
 * failure). Returns 0 or -ENOMEM. */
int host_adopt_worker(Host *h, Worker *w, int ipc_fd, int peer_fd, int output_fd);
