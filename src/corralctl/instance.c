/* instance: control socket locations and discovery; see instance.h.
 *
 * Called by ctl.c (resolving -i NAME or finding the only instance) and by
 * the list command. The directory list is recomputed on every call; it
 * depends only on the environment and the effective uid. */
#include <dirent.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "instance.h"

#define ROOT_RUNTIME_DIR "/run/corral"

bool instance_name_valid(const char *name) {
        return name && *name && !strchr(name, '/') && strcmp(name, ".") != 0 && strcmp(name, "..") != 0;
}

/* $RUNTIME_DIRECTORY may list several directories separated by ':' when a
 * unit has several RuntimeDirectory= entries; corral's units have one, and
 * the first is the one that counts. */
static char *first_runtime_directory(void) {
        const char *e = getenv("RUNTIME_DIRECTORY");
        if (!e || *e != '/')
                return NULL;
        return strndup(e, strcspn(e, ":"));
}

int instance_socket_candidates(const char *name, char ***ret) {
        _cleanup_strv_free_ char **l = NULL;
        _cleanup_free_ char *rd = first_runtime_directory();
        const char *xdg = getenv("XDG_RUNTIME_DIR");
        int r;

        if (rd && (r = strv_extendf(&l, "%s/%s.sock", rd, name)) < 0)
                return r;
        if (geteuid() != 0 && xdg && *xdg == '/' && (r = strv_extendf(&l, "%s/corral/%s.sock", xdg, name)) < 0)
                return r;
        if ((r = strv_extendf(&l, "%s/%s.sock", ROOT_RUNTIME_DIR, name)) < 0)
                return r;
        *ret = TAKE_PTR(l);
        return 0;
}

int instance_socket_path(const char *name, char **ret) {
        _cleanup_strv_free_ char **l = NULL;
        struct stat st;
        int r;

        if (!instance_name_valid(name))
                return -EINVAL;
        r = instance_socket_candidates(name, &l);
        if (r < 0)
                return r;
        const char *pick = l[0];
        for (char **p = l; *p; p++)
                if (lstat(*p, &st) == 0) {
                        pick = *p;
                        break;
                }
        *ret = strdup(pick);
        return *ret ? 0 : -ENOMEM;
}

int instance_runtime_dirs(char ***ret) {
        _cleanup_strv_free_ char **l = NULL;
        const char *rd = getenv("RUNTIME_DIRECTORY");
        const char *xdg = getenv("XDG_RUNTIME_DIR");
        struct { dev_t dev; ino_t ino; } seen[64];
        size_t nseen = 0;
        int r;

        _cleanup_strv_free_ char **want = NULL;
        if (rd)
                for (const char *p = rd; *p;) {
                        size_t n = strcspn(p, ":");
                        if (n > 0 && *p == '/') {
                                char *d = strndup(p, n);
                                if (!d || strv_push(&want, d) < 0) {
                                        free(d);
                                        return -ENOMEM;
                                }
                        }
                        p += n + (p[n] == ':');
                }
        if (strv_extend(&want, ROOT_RUNTIME_DIR) < 0)
                return -ENOMEM;
        if (xdg && *xdg == '/' && (r = strv_extendf(&want, "%s/%s", xdg, "corral")) < 0)
                return r;

        for (char **d = want; *d; d++) {
                struct stat st;
                bool dup = false;
                if (stat(*d, &st) < 0 || !S_ISDIR(st.st_mode))
                        continue;
                for (size_t i = 0; i < nseen; i++)
                        dup = dup || (seen[i].dev == st.st_dev && seen[i].ino == st.st_ino);
                if (dup || nseen == ELEMENTSOF(seen))
                        continue;
                seen[nseen].dev = st.st_dev;
                seen[nseen].ino = st.st_ino;
                nseen++;
                if (strv_extend(&l, *d) < 0)
                        return -ENOMEM;
        }
        if (!l && !(l = calloc(1, sizeof(char *))))
                return -ENOMEM;
        *ret = TAKE_PTR(l);
        return 0;
}

static bool has_sock_suffix(const char *s) {
        size_t n = strlen(s);
        return n > 5 && strcmp(s + n - 5, ".sock") == 0;
}

static int cmp_str(const void *a, const void *b) {
        return strcmp(*(char * const *) a, *(char * const *) b);
}

/* Whether dir/NAME.sock (st: its lstat) is a corral control socket. Other
 * programs keep sockets in the same directories (the template's own
 * listening socket is /run/corral/NAME.http.sock), and connecting to a
 * stranger's socket to ask is neither polite nor safe: it may be a
 * service that acts on a connection, or one that never answers. So the
 * file system decides: corrald binds its notify socket as NAME.notify
 * beside its control socket (notify-server.c), a socket owned by the same
 * user with no group or other permission bits (it is made 0600). A
 * corrald killed with SIGKILL leaves both behind, and is still listed
 * (as unreachable), which is what an operator wants to see.
 *
 * Not recognised: a corrald whose notify socket did not fit beside the
 * control socket (a control path within two bytes of the 107-byte
 * sun_path limit; it falls back to a directory under /tmp) and one
 * upgraded in place from a corrald that used an abstract notify name.
 * Both are still reached with -i NAME or -s PATH. */
static bool is_control_socket(int dirfd, const char *name, const struct stat *st) {
        _cleanup_free_ char *notify = NULL;
        struct stat nst;
        size_t n = strlen(name) - strlen(".sock");

        if (asprintf(&notify, "%.*s.notify", (int) n, name) < 0)
                return false;
        return fstatat(dirfd, notify, &nst, AT_SYMLINK_NOFOLLOW) == 0 && S_ISSOCK(nst.st_mode) &&
               nst.st_uid == st->st_uid && (nst.st_mode & 0077) == 0;
}

/* Append the control sockets of one directory, sorted. A directory we
 * cannot read (a non-root user and a private /run/corral) simply adds
 * nothing. */
static int discover_dir(const char *dir, char ***l) {
        _cleanup_strv_free_ char **found = NULL;
        DIR *d = opendir(dir);
        struct dirent *de;
        int r = 0;

        if (!d)
                return 0;
        while ((de = readdir(d))) {
                struct stat st;
                if (!has_sock_suffix(de->d_name))
                        continue;
                if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISSOCK(st.st_mode) ||
                    !is_control_socket(dirfd(d), de->d_name, &st))
                        continue;
                if ((r = strv_extendf(&found, "%s/%s", dir, de->d_name)) < 0)
                        break;
        }
        closedir(d);
        if (r < 0)
                return r;
        if (!found)
                return 0;
        qsort(found, strv_length(found), sizeof(char *), cmp_str);
        for (char **p = found; *p; p++)
                if ((r = strv_extend(l, *p)) < 0)
                        return r;
        return 0;
}

int instance_discover(char ***ret) {
        _cleanup_strv_free_ char **dirs = NULL;
        _cleanup_strv_free_ char **l = NULL;
        int r = instance_runtime_dirs(&dirs);
        if (r < 0)
                return r;
        for (char **d = dirs; *d; d++)
                if ((r = discover_dir(*d, &l)) < 0)
                        return r;
        if (!l && !(l = calloc(1, sizeof(char *))))
                return -ENOMEM;
        *ret = TAKE_PTR(l);
        return 0;
}

char *instance_name_from_path(const char *path) {
        const char *b = strrchr(path, '/');
        b = b ? b + 1 : path;
        return has_sock_suffix(b) ? strndup(b, strlen(b) - 5) : strdup(b);
}
