/* test-iphash: balance ip-hash's arithmetic (SPEC §5) — SipHash-2-4
 * against the reference vectors, which bytes of an address are hashed,
 * the spread and consistency of the slot choice, and the walk past slots
 * that cannot take a connection. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/un.h>

#include "test-helpers.h"

#include "iphash.h"

static const uint8_t KEY[IPHASH_KEY_SIZE] = { 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15 };

static struct sockaddr_in v4(const char *a, uint16_t port) {
        struct sockaddr_in s = { .sin_family = AF_INET, .sin_port = htons(port) };
        assert_int_eq(inet_pton(AF_INET, a, &s.sin_addr), 1);
        return s;
}

static struct sockaddr_in6 v6(const char *a, uint16_t port) {
        struct sockaddr_in6 s = { .sin6_family = AF_INET6, .sin6_port = htons(port) };
        assert_int_eq(inet_pton(AF_INET6, a, &s.sin6_addr), 1);
        return s;
}

static uint64_t hash_of(const void *sa, socklen_t len, const uint8_t *key) {
        uint64_t h = 0;
        assert_true(iphash_of(sa, len, key, &h));
        return h;
}

/* ---- SipHash-2-4 ---------------------------------------------------------- */

static void test_siphash_reference_vectors(void **state) {
        /* vectors.h of https://github.com/veorq/SipHash: key 00..0f,
         * message 00 01 .. (len-1), read as little-endian words. */
        uint8_t in[64];
        for (unsigned i = 0; i < sizeof(in); i++)
                in[i] = (uint8_t) i;
        assert_u64_eq(iphash_siphash24(in, 0, KEY), UINT64_C(0x726fdb47dd0e0e31));
        assert_u64_eq(iphash_siphash24(in, 1, KEY), UINT64_C(0x74f839c593dc67fd));
        assert_u64_eq(iphash_siphash24(in, 8, KEY), UINT64_C(0x93f5f5799a932462));
        assert_u64_eq(iphash_siphash24(in, 15, KEY), UINT64_C(0xa129ca6149be45e5));
        assert_u64_eq(iphash_siphash24(in, 63, KEY), UINT64_C(0x958a324ceb064572));
}

/* ---- the client address ---------------------------------------------------- */

static void test_address_bytes(void **state) {
        uint8_t a[IPHASH_ADDRESS_MAX];
        struct sockaddr_in s4 = v4("192.0.2.7", 80);
        assert_int_eq(iphash_address((struct sockaddr *) &s4, sizeof(s4), a), 4);
        assert_memory_equal(a, "\xc0\x00\x02\x07", 4);

        struct sockaddr_in6 m = v6("::ffff:192.0.2.7", 443);
        assert_int_eq(iphash_address((struct sockaddr *) &m, sizeof(m), a), 4);
        assert_memory_equal(a, "\xc0\x00\x02\x07", 4);

        struct sockaddr_in6 s6 = v6("2001:db8::1", 443);
        assert_int_eq(iphash_address((struct sockaddr *) &s6, sizeof(s6), a), 16);
        assert_memory_equal(a, &s6.sin6_addr, 16);
}

static void test_no_address(void **state) {
        uint8_t a[IPHASH_ADDRESS_MAX];
        uint64_t h = 42;
        /* A unix socket peer: accept(2) gives just the family (unnamed). */
        struct sockaddr_un un = { .sun_family = AF_UNIX };
        assert_int_eq(iphash_address((struct sockaddr *) &un, sizeof(sa_family_t), a), 0);
        assert_int_eq(iphash_address((struct sockaddr *) &un, sizeof(un), a), 0);
        assert_false(iphash_of((struct sockaddr *) &un, sizeof(un), KEY, &h));
        assert_u64_eq(h, 42);
        /* Truncated addresses and nothing at all. */
        struct sockaddr_in s4 = v4("192.0.2.7", 80);
        assert_int_eq(iphash_address((struct sockaddr *) &s4, sizeof(s4) - 1, a), 0);
        struct sockaddr_in6 s6 = v6("2001:db8::1", 443);
        assert_int_eq(iphash_address((struct sockaddr *) &s6, sizeof(s6) - 1, a), 0);
        assert_int_eq(iphash_address(NULL, 0, a), 0);
        assert_int_eq(iphash_address((struct sockaddr *) &s4, 0, a), 0);
}

static void test_same_client_same_hash(void **state) {
        struct sockaddr_in a = v4("198.51.100.9", 40000), b = v4("198.51.100.9", 51234), c = v4("198.51.100.10", 40000);
        struct sockaddr_in6 mapped = v6("::ffff:198.51.100.9", 1);
        uint64_t h = hash_of(&a, sizeof(a), KEY);
        /* Another port, or the same client through a dual-stack listener. */
        assert_u64_eq(hash_of(&b, sizeof(b), KEY), h);
        assert_u64_eq(hash_of(&mapped, sizeof(mapped), KEY), h);
        /* Another client, and the same one under another key. */
        assert_true(hash_of(&c, sizeof(c), KEY) != h);
        uint8_t other[IPHASH_KEY_SIZE] = { 1 };
        assert_true(hash_of(&a, sizeof(a), other) != h);
        /* An IPv6 address that ends in the same four bytes is not that client. */
        struct sockaddr_in6 compat = v6("2001:db8::c633:6409", 1);
        assert_true(hash_of(&compat, sizeof(compat), KEY) != h);
}

/* ---- the slot --------------------------------------------------------------- */

static void test_slot_range(void **state) {
        assert_int_eq(iphash_slot(12345, 0), 0);
        assert_int_eq(iphash_slot(UINT64_MAX, 1), 0);
        for (unsigned n = 1; n <= 70; n++)
                for (uint64_t x = 0; x < 2000; x++) {
                        unsigned s = iphash_slot(iphash_siphash24(&x, sizeof(x), KEY), n);
                        if (s >= n)
                                fail_msg("slot %u of %u", s, n);
                }
        assert_true(iphash_slot(UINT64_MAX, 4000) < 4000);
        assert_true(iphash_slot(0, 4000) < 4000);
        /* No overflow near the top of the range (UBSan watches). */
        for (uint64_t x = 0; x < 200; x++)
                assert_true(iphash_slot(iphash_siphash24(&x, sizeof(x), KEY), UINT32_MAX) < UINT32_MAX);
}

static void test_slot_spread(void **state) {
        /* 100000 clients over 4 slots: each within 2% of a quarter. */
        unsigned count[4] = { 0 };
        for (uint32_t x = 0; x < 100000; x++) {
                struct sockaddr_in s = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(0x0a000000 + x) };
                count[iphash_slot(hash_of(&s, sizeof(s), KEY), 4)]++;
        }
        for (unsigned i = 0; i < 4; i++)
                if (count[i] < 23000 || count[i] > 27000)
                        fail_msg("slot %u got %u of 100000", i, count[i]);
}

static void test_slot_consistency(void **state) {
        /* Adding slot n moves clients only onto it, about 1/(n+1) of them;
         * so removing the last slot moves only its own clients. */
        for (unsigned n = 1; n < 12; n++) {
                unsigned moved = 0, total = 20000;
                for (uint64_t x = 0; x < total; x++) {
                        uint64_t h = iphash_siphash24(&x, sizeof(x), KEY);
                        unsigned a = iphash_slot(h, n), b = iphash_slot(h, n + 1);
                        if (a != b) {
                                if (b != n)
                                        fail_msg("%u -> %u slots moved a client from %u to %u", n, n + 1, a, b);
                                moved++;
                        }
                }
                double expected = (double) total / (n + 1);
                if (moved < 0.9 * expected || moved > 1.1 * expected)
                        fail_msg("%u -> %u slots moved %u of %u clients", n, n + 1, moved, total);
        }
}

/* ---- the walk past slots that cannot take it -------------------------------- */

typedef struct Fake {
        bool ready[8];
        unsigned asked[8];
        unsigned n_asked;
} Fake;

static bool fake_take(unsigned slot, void *userdata) {
        Fake *f = userdata;
        f->asked[f->n_asked++] = slot;
        return f->ready[slot];
}

static void test_deliver_home_then_next_in_order(void **state) {
        uint64_t h = 0;
        unsigned home = 0;
        /* A hash whose home among 4 is slot 2, so that the walk wraps. */
        for (uint64_t x = 0; home != 2; x++)
                home = iphash_slot(h = iphash_siphash24(&x, sizeof(x), KEY), 4);

        Fake f = { .ready = { true, true, true, true } };
        assert_int_eq(iphash_deliver(h, 4, fake_take, &f), 2);
        assert_int_eq(f.n_asked, 1);

        /* Home not ready: the next one, every time. */
        for (unsigned round = 0; round < 3; round++) {
                f = (Fake) { .ready = { true, true, false, true } };
                assert_int_eq(iphash_deliver(h, 4, fake_take, &f), 3);
                assert_int_eq(f.n_asked, 2);
        }
        /* Neither it nor the next: wrap to slot 0, asking each once. */
        f = (Fake) { .ready = { true, true, false, false } };
        assert_int_eq(iphash_deliver(h, 4, fake_take, &f), 0);
        assert_int_eq(f.n_asked, 3);
        assert_int_eq(f.asked[0], 2);
        assert_int_eq(f.asked[1], 3);
        assert_int_eq(f.asked[2], 0);
        /* None: every slot asked exactly once. */
        f = (Fake) { 0 };
        assert_int_eq(iphash_deliver(h, 4, fake_take, &f), -1);
        assert_int_eq(f.n_asked, 4);
        /* Home ready again: back to it. */
        f = (Fake) { .ready = { true, true, true, true } };
        assert_int_eq(iphash_deliver(h, 4, fake_take, &f), 2);
        /* No slots. */
        f = (Fake) { 0 };
        assert_int_eq(iphash_deliver(h, 0, fake_take, &f), -1);
        assert_int_eq(f.n_asked, 0);
}

/* ---- the key as text (the upgrade state) ------------------------------------ */

static void test_key_text(void **state) {
        char s[IPHASH_KEY_STRING_MAX];
        uint8_t k[IPHASH_KEY_SIZE] = { 0 };
        iphash_key_format(KEY, s);
        assert_string_equal(s, "000102030405060708090a0b0c0d0e0f");
        assert_int_eq(iphash_key_parse(s, k), 0);
        assert_memory_equal(k, KEY, sizeof(KEY));
        assert_int_eq(iphash_key_parse("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF", k), 0);
        assert_int_eq(k[0], 0xff);

        static const char *bad[] = { NULL, "", "00", "000102030405060708090a0b0c0d0e0", "000102030405060708090a0b0c0d0e0f0",
                                     "000102030405060708090a0b0c0d0e0g", " 00102030405060708090a0b0c0d0e0f" };
        memcpy(k, KEY, sizeof(k));
        for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
                assert_int_eq(iphash_key_parse(bad[i], k), -EINVAL);
        assert_memory_equal(k, KEY, sizeof(KEY));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_siphash_reference_vectors),
                cmocka_unit_test(test_address_bytes),
                cmocka_unit_test(test_no_address),
                cmocka_unit_test(test_same_client_same_hash),
                cmocka_unit_test(test_slot_range),
                cmocka_unit_test(test_slot_spread),
                cmocka_unit_test(test_slot_consistency),
                cmocka_unit_test(test_deliver_home_then_next_in_order),
                cmocka_unit_test(test_key_text),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
