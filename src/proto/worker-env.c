/* worker-env: see worker-env.h. */
#include <string.h>

#include "worker-env.h"

static const char * const reserved[] = {
        "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID",
        "CORRAL_INSTANCE", "CORRAL_WORKER_ID", "CORRAL_GENERATION", "CORRAL_IPC_FD",
        /* Describes the process's own stderr (SPEC §3): set per worker. */
        "JOURNAL_STREAM",
        /* Node.js's IPC channel (ipc "node", SPEC §6): only ever our channel;
         * an inherited one would name some other fd. */
        "NODE_CHANNEL_FD", "NODE_CHANNEL_SERIALIZATION_MODE", "NODE_UNIQUE_ID",
};

bool worker_env_is_reserved(const char *name, size_t len) {
        for (size_t i = 0; i < sizeof(reserved) / sizeof(reserved[0]); i++)
                if (strlen(reserved[i]) == len && memcmp(reserved[i], name, len) == 0)
                        return true;
        return false;
}
