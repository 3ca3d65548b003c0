/* iphash: the arithmetic of balance ip-hash (SPEC §5) — which slot a
 * client address belongs to. Pure: handoff.c brings the key and the peer
 * address, and walks on from the slot given here when that one cannot
 * take the connection.
 *
 * The address is hashed with SipHash-2-4 under a random key of the
 * instance (handoff.c draws it at start; an upgrade carries it), not with
 * a fixed function: with a hash anyone can compute, a client who controls
 * many addresses (an IPv6 /64 holds 2^64) picks the ones that land on one
 * slot and loads a single worker with all its connections, or lands beside
 * a chosen victim. SipHash is a keyed PRF made for exactly this (hash
 * tables fed by the network) and costs a few dozen ns for 16 bytes.
 *
 * The slot is the hash's jump consistent hash over the slot count
 * (Lamping and Veach, 2014): changing the count changes where some clients
 * go, but as few as can be — scaling from n to n+1 slots moves 1/(n+1) of
 * the clients (all to the new slot), and scaling down moves only the
 * clients of the slots removed (corrald removes the highest ids). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define IPHASH_KEY_SIZE 16
/* The longest client address hashed: an IPv6 address. */
#define IPHASH_ADDRESS_MAX 16
/* Hex text of a key, with its NUL. */
#define IPHASH_KEY_STRING_MAX (2 * IPHASH_KEY_SIZE + 1)

/* SipHash-2-4 (Aumasson and Bernstein) of len bytes at data under key. */
uint64_t iphash_siphash24(const void *data, size_t len, const uint8_t key[static IPHASH_KEY_SIZE]);

/* The client address in sa, as hashed: the 4 bytes of an IPv4 address, or
 * of an IPv4-mapped IPv6 one (::ffff:a.b.c.d is the same client on a dual
 * stack listener), else the 16 bytes of an IPv6 address. Never the port:
 * each connection of a client has another. Returns the length written to
 * ret, 0 when sa holds no IP address (AF_UNIX, a truncated address). */
size_t iphash_address(const struct sockaddr *sa, socklen_t len, uint8_t ret[static IPHASH_ADDRESS_MAX]);

/* The hash of the client address in sa under key. Returns false when sa
 * holds no IP address (the caller falls back to round-robin). */
bool iphash_of(const struct sockaddr *sa, socklen_t len, const uint8_t key[static IPHASH_KEY_SIZE],
               uint64_t *ret);

/* The home slot of hash among n >= 1 slots, in [0, n). */
unsigned iphash_slot(uint64_t hash, unsigned n);

/* Give a connection with this hash to a slot: its home slot, else the next
 * one in slot order that takes it (wrapping around), so that a client's
 * fallback is the same slot every time while its own is not ready.
 * take(slot, userdata) offers it to one slot and says whether it took it.
 * Returns the slot that took it, or -1 when none did (each was asked once). */
int iphash_deliver(uint64_t hash, unsigned n, bool (*take)(unsigned slot, void *userdata), void *userdata);

/* A key as 32 lowercase hex digits in ret (IPHASH_KEY_STRING_MAX bytes),
 * and back: parsing returns 0, or -EINVAL for anything but 32 hex digits
 * (ret is then unchanged). */
void iphash_key_format(const uint8_t key[static IPHASH_KEY_SIZE], char ret[static IPHASH_KEY_STRING_MAX]);
int iphash_key_parse(const char *s, uint8_t ret[static IPHASH_KEY_SIZE]);
