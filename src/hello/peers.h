/* peers: the load table that corral-hello workers sharing one listening
 * socket use to split connections evenly (SPEC §5, "shared" balance).
 *
 * Each worker publishes its number of open connections in a small shared
 * memory table named after the listening socket's inode, so every process
 * holding that socket, and only those, finds the same table. A worker that
 * has more connections than its least loaded live sibling leaves the next
 * connection to it. Pure: no libuv, no logging. */
#pragma once

#include <stdint.h>

typedef struct Peers Peers;

/* Open (creating if needed) the table for the socket listen_fd and claim a
 * slot in it. Returns 0 and *ret, or -errno (e.g. no /dev/shm, a table
 * owned by another user, or no free slot); the caller then simply works
 * without siblings' loads. */
int peers_open(int listen_fd, Peers **ret);

/* Publish our current load (open connections). Cheap: one atomic store. */
void peers_set_load(Peers *p, uint32_t load);

/* Refresh our liveness stamp; call at least every PEERS_HEARTBEAT_USEC.
 * A slot not refreshed for PEERS_STALE_USEC counts as a dead worker's. */
void peers_heartbeat(Peers *p);

/* Lowest load published by a live sibling (not us), or UINT32_MAX when we
 * know of none. Reads the table without locking; the result is a hint. */
uint32_t peers_min_load(const Peers *p);

/* Release our slot (siblings stop counting on us at once), unlink the
 * table if no live worker is left in it, unmap, free. Accepts NULL;
 * returns NULL. */
Peers *peers_close(Peers *p);

#define PEERS_HEARTBEAT_USEC (1000ULL * 1000ULL)
#define PEERS_STALE_USEC (3ULL * PEERS_HEARTBEAT_USEC)
