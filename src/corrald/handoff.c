/* handoff: see handoff.h.
 *
 * Invariants: while connections are held (held_fd), or accepting is
 * paused for EMFILE, the listener polls are stopped; held connections are
 * at most one accepted, plus what was taken back from workers. The accepted fd is blocking and CLOEXEC: the worker owns its
 * mode, and the master never reads or writes it. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fd-util.h"
#include "handoff.h"
#include "ipc.h"
#include "log.h"
#include "util.h"

/* How soon held connections are offered again: RETRY_MS_MIN after a
 * retry that handed some on, doubling up to RETRY_MS_MAX while retries
 * hand none (the workers are not reading). The master cannot see a worker
 * read its channel, and a worker that reads one hand-off per loop turn
 * meets the bound in a burst: a fixed 5 ms capped such a pool at 16
 * connections per worker per 5 ms (bench/handoff, plain/round-robin:
 * 0.23x raw-c, 0.69x with this). */
#define RETRY_MS_MIN 1
#define RETRY_MS_MAX 8
/* How long accepting pauses after EMFILE/ENFILE. */
#define EMFILE_PAUSE_MS 100

static void pause_accepting(Handoff *h) {
        if (!h->active)
                return;
        h->active = false;
        for (unsigned i = 0; i < h->n_listeners; i++)
                uv_poll_stop(&h->listeners[i].poll);
}

static void on_readable(uv_poll_t *p, int status, int events);

static void resume_accepting(Handoff *h) {
        if (h->active || !h->started || h->n_held > 0 || h->accept_paused)
                return;
        h->active = true;
        for (unsigned i = 0; i < h->n_listeners; i++)
                if (uv_poll_start(&h->listeners[i].poll, UV_READABLE, on_readable) < 0)
                        log_error("cannot watch listener %u for connections", i);
}

static void on_stall_check(uv_timer_t *t);

/* Offer fd to the worker of one slot. Returns 0 when it took it. */
static int offer(Handoff *h, Worker *w, int fd, uint8_t index) {
        if (w->stalled_until && now_usec() < w->stalled_until)
                return -EBUSY;
        int r = ipc_send_fd(w->ipc, fd, index);
        if (r < 0)
                return r;
        w->handed++;
        h->n_handed++;
        if (h->max_requests && w->handed == h->max_requests)
                h->recycle_due = true;
        return r;
}

/* least-conn's view of a worker that never reports a close: until it has
 * been handed HANDOFF_SILENT_AFTER connections, each counts as open (it
 * may just not have closed one yet, as with keep-alive); after that it is
 * taken not to report at all, and takes its turn with the least loaded. */
static bool silent(const Worker *w) {
        return !w->reports_closes && w->handed >= HANDOFF_SILENT_AFTER;
}

/* Offer fd to the worker of slot i; on success fd is closed here (unless
 * the channel kept it until the worker answers) and the turn moves past i. */
static bool try_slot(Handoff *h, unsigned i, int fd, uint8_t index) {
        Worker *w = slot_ready_worker(h->slots[i]);
        int r = w ? offer(h, w, fd, index) : -ENOENT;
        if (r < 0) {
                h->n_retried++;
                return false;
        }
        h->cursor = i + 1;
        if (r == 0)
                safe_close(fd);
        return true;
}

typedef struct Candidate {
        uint64_t load;
        unsigned turn;             /* distance from the cursor */
        unsigned slot;
} Candidate;

static int compare_candidates(const void *a, const void *b) {
        const Candidate *x = a, *y = b;
        if (x->load != y->load)
                return x->load < y->load ? -1 : 1;
        return (x->turn > y->turn) - (x->turn < y->turn);
}

/* ip-hash: the hash of fd's peer address. Asked of the socket at every
 * attempt, not kept: a held or taken-back connection has the same peer
 * and the key does not change, so it keeps its hash. False when the peer
 * has no IP address (a unix socket) or is gone already (ENOTCONN): the
 * connection then takes its turn as in round-robin. */
static bool peer_hash(const Handoff *h, int fd, uint64_t *ret) {
        struct sockaddr_storage sa;
        socklen_t len = sizeof(sa);
        if (getpeername(fd, (struct sockaddr *) &sa, &len) == -1)
                return false;
        return iphash_of((struct sockaddr *) &sa, len, h->hash_key, ret);
}

typedef struct HashedOffer {
        Handoff *h;
        int fd;
        uint8_t index;
} HashedOffer;

/* iphash_deliver()'s offer to slot i. A slot without a ready worker is
 * passed over without counting a retry: that is the walk, not a failure. */
static bool take_hashed(unsigned i, void *userdata) {
        HashedOffer *o = userdata;
        return slot_ready_worker(o->h->slots[i]) && try_slot(o->h, i, o->fd, o->index);
}

/* Pass fd on to a ready worker: round-robin from the cursor, or the least
 * loaded one, ties in turn. The first choice costs one or two passes over
 * the slots; only when it cannot take the connection (its channel full,
 * at the bound, stalled) are the others tried, once each, in the order of
 * the same rule: O(n log n), not a new search per attempt.
 *
 * ip-hash: the client's slot, and from there the next one in slot order
 * that takes it (O(n) at worst), so that while its slot cannot (not ready,
 * at the bound, stalled) all of a client's connections go to one other
 * slot, and come home once it can. Holding the connection for its own slot
 * instead would stop accepting for every client (see hold()).
 */
bool handoff_deliver(Handoff *h, int fd, uint8_t index) {
        unsigned n = h->n_slots;
        bool least = h->balance == BALANCE_LEAST_CONN;
        uint64_t min = 0;
        int first = -1;

        if (n == 0)
                return false;
        uint64_t hash;
        if (h->balance == BALANCE_IP_HASH && peer_hash(h, fd, &hash))
                return iphash_deliver(hash, n, take_hashed, &(HashedOffer) { h, fd, index }) >= 0;
        /* least-conn: the lowest load; a silent worker takes turns with it. */
        if (least) {
                min = UINT64_MAX;
                for (unsigned i = 0; i < n; i++) {
                        Worker *w = slot_ready_worker(h->slots[i]);
                        if (w && !silent(w))
                                min = MIN(min, handoff_open(w));
                }
                if (min == UINT64_MAX)
                        min = 0;
        }
        for (unsigned k = 0; k < n && first < 0; k++) {
                unsigned i = (h->cursor + k) % n;
                Worker *w = slot_ready_worker(h->slots[i]);
                if (w && (!least || silent(w) || handoff_open(w) == min))
                        first = (int) i;
        }
        if (first < 0)
                return false;
        if (try_slot(h, (unsigned) first, fd, index))
                return true;

        Candidate *c = malloc(n * sizeof(Candidate));
        unsigned m = 0;
        if (!c)
                return false;
        for (unsigned k = 0; k < n; k++) {
                unsigned i = (h->cursor + k) % n;
                Worker *w = i == (unsigned) first ? NULL : slot_ready_worker(h->slots[i]);
                if (w)
                        c[m++] = (Candidate) { .load = !least || silent(w) ? min : handoff_open(w), .turn = k,
                                               .slot = i };
        }
        qsort(c, m, sizeof(Candidate), compare_candidates);
        bool taken = false;
        for (unsigned k = 0; k < m && !taken; k++)
                taken = try_slot(h, c[k].slot, fd, index);
        free(c);
        return taken;
}

_printf_(2, 3) static void log_limited(Handoff *h, const char *fmt, ...) {
        unsigned suppressed;
        if (!ratelimit_below(&h->log_limit, now_usec(), &suppressed))
                return;
        if (suppressed)
                log_warning("hand-off: %u similar messages suppressed", suppressed);
        char msg[256];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        log_warning("hand-off: %s", msg);
}

static void on_retry(uv_timer_t *t) {
        Handoff *h = t->data;
        uint64_t handed = h->n_handed;
        h->accept_paused = false;
        handoff_kick(h);
        /* Still held: nobody can take them yet; keep offering. */
        if (h->n_held > 0) {
                h->retry_ms = h->n_handed != handed ? RETRY_MS_MIN : MIN(h->retry_ms * 2, RETRY_MS_MAX);
                (void) uv_timer_start(&h->retry, on_retry, h->retry_ms, 0);
        }
}

/* Hold fd until a worker can take it: at the back (accepted now) or at the
 * front (taken back: it waited longer). Returns false when out of memory
 * (fd is closed then: lost, counted and logged). */
static bool hold(Handoff *h, int fd, uint8_t index, bool front) {
        if (h->n_held == h->cap_held) {
                unsigned cap = h->cap_held ? h->cap_held * 2 : 16;
                int *f = realloc(h->held_fd, cap * sizeof(int));
                if (f)
                        h->held_fd = f;
                uint8_t *i = f ? realloc(h->held_index, cap) : NULL;
                if (i)
                        h->held_index = i;
                if (!f || !i) {
                        safe_close(fd);
                        h->n_lost++;
                        log_limited(h, "out of memory holding a connection: it is lost");
                        return false;
                }
                h->cap_held = cap;
        }
        unsigned at = front ? 0 : h->n_held;
        if (front) {
                memmove(h->held_fd + 1, h->held_fd, h->n_held * sizeof(int));
                memmove(h->held_index + 1, h->held_index, h->n_held);
        }
        h->held_fd[at] = fd;
        h->held_index[at] = index;
        h->n_held++;
        pause_accepting(h);
        if (!uv_is_active((uv_handle_t *) &h->retry))
                (void) uv_timer_start(&h->retry, on_retry, front ? 0 : h->retry_ms, 0);
        return true;
}

/* A connection handed to a worker that never read it (takes fd): it goes
 * to another worker before any new one. While stopping it is closed. */
static void requeue(Handoff *h, int fd, uint8_t listener_index) {
        if (!h->started) {
                /* Stopping: no worker will take it. */
                safe_close(fd);
                h->n_lost++;
                return;
        }
        h->n_taken_back++;
        (void) hold(h, fd, listener_index, true);
}

static void on_taken_back(void *userdata, int fd, uint8_t listener_index) {
        requeue(userdata, fd, listener_index);
}

unsigned handoff_take_back(Handoff *h, Worker *w) {
        if (!w->ipc)
                return 0;
        unsigned n = ipc_take_back(w->ipc, on_taken_back, h);
        /* They were never its: least-conn must not count them open. */
        w->handed -= MIN((uint64_t) n, w->handed - w->closed);
        return n;
}

/* Workers that left a hand-off unread for HANDOFF_STALL_MS: take their
 * connections back and give them none for a while. Every
 * HANDOFF_STALL_MS / 4; O(slots), and a FIONREAD only for a worker with
 * hand-offs it may not have read. */
static void on_stall_check(uv_timer_t *t) {
        Handoff *h = t->data;
        uint64_t now = now_usec();
        for (unsigned i = 0; i < h->n_slots; i++) {
                Worker *w = slot_ready_worker(h->slots[i]);
                if (!w || !w->ipc || !w->ipc->n_inflight)
                        continue;
                unsigned before = w->ipc->n_inflight, unread = ipc_inflight(w->ipc);
                /* It reads: a stall before this one was a pause it got
                 * over, and the next one starts from 1 s again. */
                if (unread < before)
                        w->stalls = 0;
                if (unread == 0)
                        continue;
                if (now - ipc_oldest_unread(w->ipc) < HANDOFF_STALL_MS * USEC_PER_MSEC)
                        continue;
                unsigned n = handoff_take_back(h, w);
                uint64_t pause = MIN((uint64_t) HANDOFF_STALL_MS << MIN(w->stalls, 5), HANDOFF_STALL_PAUSE_MAX_MS);
                w->stalls++;
                w->stalled_until = now + pause * USEC_PER_MSEC;
                log_limited(h, "%s left %u connection%s unread for %d ms: they go to other workers, and it gets "
                            "none for %llu ms", w->who, n, n == 1 ? "" : "s", HANDOFF_STALL_MS,
                            (unsigned long long) pause);
        }
}

/* w can take no connections for a while (at its fd limit, or refusing
 * them): the n_gone it was handed and will report no close for are not
 * open (least-conn), it gets none for HANDOFF_FD_LIMIT_PAUSE_MS, and what
 * it has not read goes to other workers. Returns how many that were;
 * false in *ret_live (may be NULL) when it is no longer served (stopping,
 * no channel). */
static unsigned pause_worker(Handoff *h, Worker *w, unsigned n_gone, bool *ret_live) {
        bool live = h->started && w->ipc;
        w->handed -= MIN((uint64_t) n_gone, w->handed - w->closed);
        if (ret_live)
                *ret_live = live;
        if (!live)
                return 0;
        unsigned n = handoff_take_back(h, w);
        w->stalled_until = MAX(w->stalled_until, now_usec() + HANDOFF_FD_LIMIT_PAUSE_MS * USEC_PER_MSEC);
        return n;
}

void handoff_fd_limit(Handoff *h, Worker *w, unsigned n_lost) {
        bool live;

        w->fd_limit_reports++;
        w->fd_limit_lost += n_lost;
        /* The kernel closed them; the ones still queued would be lost the
         * same way. */
        unsigned n = pause_worker(h, w, n_lost, &live);
        if (!live)
                return;
        log_limited(h, "%s is at its fd limit (%u connection%s lost): no connections for it for %d ms%s", w->who,
                    n_lost, n_lost == 1 ? "" : "s", HANDOFF_FD_LIMIT_PAUSE_MS,
                    n > 0 ? ", its unread ones go to other workers" : "");
}

void handoff_refused(Handoff *h, Worker *w, int fd, uint8_t listener_index) {
        /* Full (maxConnections) or closing; the refused one goes first,
         * ahead of what it had not read. */
        unsigned n = pause_worker(h, w, 1, NULL);
        if (fd >= 0)
                requeue(h, fd, listener_index);         /* closes it when stopping */
        else
                h->n_lost++;
        log_limited(h, "%s refused a connection: %s; none for it for %d ms%s", w->who,
                    fd >= 0 ? "it goes to another worker" : "it is lost", HANDOFF_FD_LIMIT_PAUSE_MS,
                    n > 0 ? ", nor its unread ones" : "");
}

static void on_readable(uv_poll_t *p, int status, int events) {
        HandoffListener *l = p->data;
        Handoff *h = l->handoff;

        if (status < 0) {
                log_limited(h, "listener %u: %s", l->index, uv_strerror(status));
                return;
        }
        for (unsigned i = 0; i < HANDOFF_BATCH && h->active; i++) {
                int fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC);
                if (fd < 0) {
                        switch (errno) {
                        case EAGAIN:
                        case EINTR:
                                return;
                        case EMFILE:
                        case ENFILE:
                        case ENOBUFS:
                        case ENOMEM:
                                /* Out of fds or memory: the connections wait in
                                 * the backlog while we pause, instead of a
                                 * readable listener making us spin. */
                                h->n_accept_errors++;
                                log_limited(h, "accept: %m; pausing for %d ms", EMFILE_PAUSE_MS);
                                pause_accepting(h);
                                h->accept_paused = true;
                                (void) uv_timer_start(&h->retry, on_retry, EMFILE_PAUSE_MS, 0);
                                return;
                        default:
                                /* ECONNABORTED and the errors of the new
                                 * connection (accept(2)): that one is gone. */
                                h->n_accept_errors++;
                                continue;
                        }
                }
                if (!handoff_deliver(h, fd, l->index)) {
                        (void) hold(h, fd, l->index, false);
                        return;
                }
        }
}

void handoff_kick(Handoff *h) {
        if (!h->started)
                return;
        unsigned done = 0;
        while (done < h->n_held && handoff_deliver(h, h->held_fd[done], h->held_index[done]))
                done++;
        if (done > 0) {
                memmove(h->held_fd, h->held_fd + done, (h->n_held - done) * sizeof(int));
                memmove(h->held_index, h->held_index + done, h->n_held - done);
                h->n_held -= done;
        }
        if (h->n_held > 0)
                return;
        h->retry_ms = RETRY_MS_MIN;
        /* The timer also ends an EMFILE pause: leave it to that. */
        if (!h->accept_paused)
                uv_timer_stop(&h->retry);
        resume_accepting(h);
}

void handoff_set_slots(Handoff *h, Slot * const *slots, unsigned n_slots, const Config *c) {
        h->slots = slots;
        h->n_slots = n_slots;
        /* The mode is the one corrald started with: a reload does not
         * change it (corrald(8), as for shared, whose workers hold the
         * listening sockets). */
        if (!h->started)
                h->balance = c->balance;
        h->max_requests = c->recycle_max_requests;
        if (h->cursor >= n_slots)
                h->cursor = 0;
}

/* ip-hash's key. GRND_NONBLOCK: corrald may start early at boot, and the
 * key is not worth a start-up that hangs until the kernel's pool is
 * initialised; then GRND_INSECURE (Linux 5.6) still gives bytes no client
 * can predict in practice. Only without either is the key derived from
 * what a local user could guess (time, pid, an address under ASLR). */
static void draw_hash_key(Handoff *h) {
        if (getrandom(h->hash_key, sizeof(h->hash_key), GRND_NONBLOCK) == (ssize_t) sizeof(h->hash_key))
                return;
#ifdef GRND_INSECURE
        if (getrandom(h->hash_key, sizeof(h->hash_key), GRND_INSECURE) == (ssize_t) sizeof(h->hash_key))
                return;
#endif
        log_warning("hand-off: no random bytes from the kernel (%m): ip-hash's client-to-worker mapping is "
                    "guessable");
        uint64_t seed[3] = { now_usec(), (uint64_t) getpid(), (uint64_t) (uintptr_t) &seed };
        static const uint8_t zero[IPHASH_KEY_SIZE];
        uint64_t a = iphash_siphash24(seed, sizeof(seed), zero), b = iphash_siphash24(&a, sizeof(a), zero);
        memcpy(h->hash_key, &a, sizeof(a));
        memcpy(h->hash_key + sizeof(a), &b, sizeof(b));
}

int handoff_start(Handoff *h, uv_loop_t *loop, const ListenerSet *ls) {
        if (h->started)
                return 0;
        if (ls->n > IPC_LISTENER_INDEX_MAX + 1) {
                log_error("balance %s serves at most %d listeners; there are %u", balance_to_string(h->balance),
                          IPC_LISTENER_INDEX_MAX + 1, ls->n);
                return -E2BIG;
        }
        draw_hash_key(h);
        h->loop = loop;
        h->n_held = 0;
        h->log_limit = RATELIMIT_INIT(10 * USEC_PER_SEC, 5);
        h->listeners = calloc(ls->n ? ls->n : 1, sizeof(HandoffListener));
        if (!h->listeners)
                return log_error_errno(-ENOMEM, "hand-off: %m");
        uv_timer_init(loop, &h->retry);
        h->retry.data = h;
        h->retry_ms = RETRY_MS_MIN;
        uv_timer_init(loop, &h->stall);
        h->stall.data = h;
        /* Unreferenced: it never keeps a stopping corrald's loop alive. */
        uv_unref((uv_handle_t *) &h->stall);
        (void) uv_timer_start(&h->stall, on_stall_check, HANDOFF_STALL_MS / 4, HANDOFF_STALL_MS / 4);
        for (unsigned i = 0; i < ls->n; i++) {
                HandoffListener *l = &h->listeners[i];
                *l = (HandoffListener) { .handoff = h, .index = (uint8_t) i, .fd = ls->items[i].fd };
                int r = uv_poll_init(loop, &l->poll, l->fd);
                if (r < 0) {
                        /* Close what was set up; the caller gives up. */
                        h->n_listeners = i;
                        h->started = true;
                        handoff_stop(h);
                        return log_error_errno(-EINVAL, "hand-off: cannot watch %s: %s", ls->items[i].display,
                                               uv_strerror(r));
                }
                l->poll.data = l;
                h->n_listeners = i + 1;
        }
        h->started = true;
        resume_accepting(h);
        return 0;
}

static void on_listener_closed(uv_handle_t *handle) {
        HandoffListener *l = handle->data;
        Handoff *h = l->handoff;
        if (--h->n_listeners == 0) {
                free(h->listeners);
                h->listeners = NULL;
        }
}

void handoff_stop(Handoff *h) {
        if (!h->started)
                return;
        pause_accepting(h);
        h->started = false;
        for (unsigned i = 0; i < h->n_held; i++)
                safe_close(h->held_fd[i]);
        h->n_held = h->cap_held = 0;
        free(h->held_fd);
        free(h->held_index);
        h->held_fd = NULL;
        h->held_index = NULL;
        if (!uv_is_closing((uv_handle_t *) &h->retry))
                uv_close((uv_handle_t *) &h->retry, NULL);
        if (!uv_is_closing((uv_handle_t *) &h->stall))
                uv_close((uv_handle_t *) &h->stall, NULL);
        if (h->n_listeners == 0) {
                free(h->listeners);
                h->listeners = NULL;
        }
        for (unsigned i = 0, n = h->n_listeners; i < n; i++)
                uv_close((uv_handle_t *) &h->listeners[i].poll, on_listener_closed);
}
