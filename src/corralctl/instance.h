/* instance: where corral instances keep their control sockets.
 *
 * The rules mirror corrald's (SPEC §7): $RUNTIME_DIRECTORY/<name>.sock
 * when that variable is set, else /run/corral/<name>.sock for root, else
 * $XDG_RUNTIME_DIR/corral/<name>.sock. Reads the environment and the file
 * system; never logs. */
#pragma once

#include <stdbool.h>

#include "util.h"

/* A usable instance name: non-empty, no '/', not "." or "..". */
bool instance_name_valid(const char *name);

/* The socket paths an instance called name may use, most likely first:
 * the path corrald itself would pick in this environment, then fallbacks
 * (a non-root user also tries root's /run/corral). Returns 0 or -ENOMEM;
 * the vector is never empty on success. */
int instance_socket_candidates(const char *name, char ***ret);

/* Pick the first candidate that exists, or the first one when none does,
 * so that an error names the path corrald would use. Returns 0, -EINVAL
 * (bad name) or -ENOMEM; *ret is a new string. */
int instance_socket_path(const char *name, char **ret);

/* The runtime directories that may hold control sockets, each at most
 * once (compared by device and inode), existing ones only. */
int instance_runtime_dirs(char ***ret);

/* Every corral control socket in those directories: a "NAME.sock" socket
 * with corrald's "NAME.notify" socket beside it, owned by the same user
 * and closed to group and others. Other sockets there are never listed
 * and never connected to. In directory order, sorted by name within a
 * directory. Returns 0 or -ENOMEM. */
int instance_discover(char ***ret);

/* "app" for ".../app.sock"; the basename for other paths. NULL on ENOMEM. */
char *instance_name_from_path(const char *path);
