/* peers: shared load table of sibling workers. See peers.h.
 *
 * The table lives in POSIX shared memory, "/corral-hello.<dev>.<ino>" after
 * the listening socket's sockfs inode: every worker corrald (or systemd)
 * hands that socket to computes the same name, unrelated sockets never
 * collide, and a new socket gets a fresh table. Mode 0600 and an owner
 * check keep other users out.
 *
 * A slot's owner word packs the pid with a CLOCK_MONOTONIC stamp (seconds)
 * and is only ever changed by compare-and-swap: claiming, refreshing and
 * releasing are lock-free, and two workers can never both take a stale
 * slot. A worker killed with SIGKILL cannot wedge the table: its slot just
 * stops being refreshed, reads as stale after PEERS_STALE_USEC and is then
 * reused. The stamp, not kill(pid, 0), decides liveness because the clock
 * is shared by all processes while pids get reused. Loads are relaxed
 * atomics: a momentarily stale value only makes one accept decision a
 * little less even. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "peers.h"
#include "util.h"

#define PEERS_SLOTS 256
#define PEERS_SWEEP_AGE_SEC 60

typedef struct PeerSlot {
        _Atomic uint64_t owner;         /* pid << 32 | heartbeat second; 0: free */
        _Atomic uint32_t load;
        uint32_t reserved;
} PeerSlot;

typedef struct PeerTable {
        _Atomic uint32_t n_used;        /* slots [0, n_used) may be in use */
        uint32_t reserved;
        PeerSlot slot[PEERS_SLOTS];
} PeerTable;

struct Peers {
        PeerTable *table;
        PeerSlot *me;
        uint64_t owner;                 /* the owner word we last stored */
        uint32_t pid;
        char name[64];
};

static uint64_t now_sec(void) {
        /* +1 so that no live owner word is ever 0 (free). */
        return now_usec() / USEC_PER_SEC + 1;
}

static bool owner_is_live(uint64_t owner, uint64_t now) {
        return owner != 0 && now - (owner & UINT32_MAX) < PEERS_STALE_USEC / USEC_PER_SEC;
}

/* Take a free or stale slot. Returns it, or NULL when all are live. */
static PeerSlot *slot_claim(Peers *p) {
        uint64_t now = now_sec(), mine = (uint64_t) p->pid << 32 | (now & UINT32_MAX);
        PeerTable *t = p->table;

        for (uint32_t i = 0; i < PEERS_SLOTS; i++) {
                PeerSlot *s = &t->slot[i];
                uint64_t old = atomic_load(&s->owner);

                if (owner_is_live(old, now) || !atomic_compare_exchange_strong(&s->owner, &old, mine))
                        continue;
                atomic_store(&s->load, 0);
                uint32_t used = atomic_load(&t->n_used);
                while (used < i + 1 && !atomic_compare_exchange_weak(&t->n_used, &used, i + 1))
                        ;
                p->owner = mine;
                return s;
        }
        return NULL;
}

/* Map the table called name, creating it if create is set. Returns the fd
 * (kept open by the caller only to compare inodes) or -errno. */
static int table_map(const char *name, bool create, PeerTable **ret, struct stat *ret_st) {
        struct stat st;
        void *m;
        int fd, r;

        fd = shm_open(name, O_RDWR | O_CLOEXEC | O_NOFOLLOW | (create ? O_CREAT : 0), 0600);
        if (fd == -1)
                return -errno;
        if (fstat(fd, &st) == -1) {
                r = -errno;
                goto fail;
        }
        /* Only our own tables: another user's could feed us any numbers. */
        if (st.st_uid != geteuid()) {
                r = -EPERM;
                goto fail;
        }
        /* Several workers may race here; extending to the same size twice
         * is harmless, and new pages read as zeroes (all slots free). */
        if ((size_t) st.st_size < sizeof(PeerTable)) {
                if (!create) {
                        r = -EBADMSG;
                        goto fail;
                }
                if (ftruncate(fd, sizeof(PeerTable)) == -1) {
                        r = -errno;
                        goto fail;
                }
        }
        m = mmap(NULL, sizeof(PeerTable), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (m == MAP_FAILED) {
                r = -errno;
                goto fail;
        }
        *ret = m;
        *ret_st = st;
        return fd;
fail:
        (void) close(fd);
        return r;
}

static bool table_has_live(PeerTable *t) {
        uint64_t now = now_sec();

        for (uint32_t i = 0; i < PEERS_SLOTS; i++)
                if (owner_is_live(atomic_load(&t->slot[i].owner), now))
                        return true;
        return false;
}

/* Remove the tables of sockets whose workers all died without releasing
 * their slots (SIGKILL, a crash), which nobody else would ever clean up:
 * every slot stale, and the file older than PEERS_SWEEP_AGE_SEC so that a
 * table someone is setting up right now is spared. */
static void tables_sweep(const char *keep) {
        DIR *d = opendir("/dev/shm");   /* where glibc's shm_open() lives */
        struct dirent *de;
        time_t now = time(NULL);

        if (!d)
                return;
        while ((de = readdir(d))) {
                char name[sizeof(de->d_name) + 1];
                PeerTable *t;
                struct stat st;
                int fd;

                if (!startswith(de->d_name, "corral-hello."))
                        continue;
                snprintf(name, sizeof(name), "/%s", de->d_name);
                if (strcmp(name, keep) == 0)
                        continue;
                fd = table_map(name, false, &t, &st);
                if (fd < 0)
                        continue;
                if (now - st.st_mtime > PEERS_SWEEP_AGE_SEC && !table_has_live(t))
                        (void) shm_unlink(name);
                (void) munmap(t, sizeof(PeerTable));
                (void) close(fd);
        }
        (void) closedir(d);
}

int peers_open(int listen_fd, Peers **ret) {
        struct stat st;
        Peers *p;
        int r;

        if (fstat(listen_fd, &st) == -1)
                return -errno;
        p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        p->pid = (uint32_t) getpid();
        snprintf(p->name, sizeof(p->name), "/corral-hello.%" PRIx64 ".%" PRIx64,
                 (uint64_t) st.st_dev, (uint64_t) st.st_ino);

        tables_sweep(p->name);

        /* A sibling's sweep may unlink our table between our open and our
         * claim (if it had no live slot until then): check that the name
         * still leads to what we mapped, else we would be alone in it. */
        for (int attempt = 0;; attempt++) {
                struct stat now_st;
                int fd = table_map(p->name, true, &p->table, &st);

                if (fd < 0) {
                        r = fd;
                        goto fail;
                }
                (void) close(fd);
                p->me = slot_claim(p);
                if (!p->me) {
                        r = -EUSERS;
                        goto fail;
                }
                fd = shm_open(p->name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW, 0);
                r = fd >= 0 && fstat(fd, &now_st) == 0 && now_st.st_ino == st.st_ino;
                if (fd >= 0)
                        (void) close(fd);
                if (r || attempt >= 2)
                        break;
                uint64_t expected = p->owner;
                (void) atomic_compare_exchange_strong(&p->me->owner, &expected, 0);
                (void) munmap(p->table, sizeof(PeerTable));
                p->table = NULL;
                p->me = NULL;
        }
        *ret = p;
        return 0;

fail:
        if (p->table)
                (void) munmap(p->table, sizeof(PeerTable));
        free(p);
        return r;
}

void peers_set_load(Peers *p, uint32_t load) {
        if (p && p->me)
                atomic_store_explicit(&p->me->load, load, memory_order_relaxed);
}

void peers_heartbeat(Peers *p) {
        uint64_t expected, mine;
        uint32_t load = 0;

        if (!p)
                return;
        if (p->me) {
                expected = p->owner;
                mine = (uint64_t) p->pid << 32 | (now_sec() & UINT32_MAX);
                load = atomic_load_explicit(&p->me->load, memory_order_relaxed);
                if (atomic_compare_exchange_strong(&p->me->owner, &expected, mine)) {
                        p->owner = mine;
                        return;
                }
        }
        /* We stalled long enough for someone to take our slot (or had
         * none): get a new one rather than overwrite theirs. */
        p->me = slot_claim(p);
        peers_set_load(p, load);
}

uint32_t peers_min_load(const Peers *p) {
        uint32_t n, min = UINT32_MAX;
        uint64_t now;

        if (!p)
                return min;
        now = now_sec();
        n = atomic_load_explicit(&p->table->n_used, memory_order_relaxed);
        for (uint32_t i = 0; i < n && i < PEERS_SLOTS; i++) {
                PeerSlot *s = &p->table->slot[i];
                uint32_t load;

                if (s == p->me || !owner_is_live(atomic_load_explicit(&s->owner, memory_order_relaxed), now))
                        continue;
                load = atomic_load_explicit(&s->load, memory_order_relaxed);
                if (load < min)
                        min = load;
        }
        return min;
}

Peers *peers_close(Peers *p) {
        if (!p)
                return NULL;
        if (p->me) {
                uint64_t expected = p->owner;
                (void) atomic_compare_exchange_strong(&p->me->owner, &expected, 0);
        }
        /* The last one out removes the table. A sibling that opened it just
         * now keeps using the unlinked copy while later ones create a new
         * table: fairness degrades until it exits, nothing breaks. */
        if (!table_has_live(p->table))
                (void) shm_unlink(p->name);
        (void) munmap(p->table, sizeof(PeerTable));
        free(p);
        return NULL;
}
