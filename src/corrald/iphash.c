/* iphash: see iphash.h. */
#include <errno.h>
#include <netinet/in.h>
#include <string.h>

#include "iphash.h"

static uint64_t rotl(uint64_t x, unsigned b) {
        return (x << b) | (x >> (64 - b));
}

static uint64_t load_le64(const uint8_t *p) {
        uint64_t v = 0;
        for (unsigned i = 0; i < 8; i++)
                v |= (uint64_t) p[i] << (8 * i);
        return v;
}

#define SIPROUND                                                         \
        do {                                                             \
                v0 += v1; v1 = rotl(v1, 13); v1 ^= v0; v0 = rotl(v0, 32); \
                v2 += v3; v3 = rotl(v3, 16); v3 ^= v2;                   \
                v0 += v3; v3 = rotl(v3, 21); v3 ^= v0;                   \
                v2 += v1; v1 = rotl(v1, 17); v1 ^= v2; v2 = rotl(v2, 32); \
        } while (0)

/* The reference algorithm (https://github.com/veorq/SipHash), byte order
 * explicit so that a key carried across an upgrade means the same. */
uint64_t iphash_siphash24(const void *data, size_t len, const uint8_t key[static IPHASH_KEY_SIZE]) {
        const uint8_t *in = data;
        uint64_t k0 = load_le64(key), k1 = load_le64(key + 8);
        uint64_t v0 = UINT64_C(0x736f6d6570736575) ^ k0;
        uint64_t v1 = UINT64_C(0x646f72616e646f6d) ^ k1;
        uint64_t v2 = UINT64_C(0x6c7967656e657261) ^ k0;
        uint64_t v3 = UINT64_C(0x7465646279746573) ^ k1;
        size_t whole = len - len % 8;

        for (size_t i = 0; i < whole; i += 8) {
                uint64_t m = load_le64(in + i);
                v3 ^= m;
                SIPROUND;
                SIPROUND;
                v0 ^= m;
        }
        uint64_t b = (uint64_t) len << 56;
        for (size_t i = whole; i < len; i++)
                b |= (uint64_t) in[i] << (8 * (i - whole));
        v3 ^= b;
        SIPROUND;
        SIPROUND;
        v0 ^= b;
        v2 ^= 0xff;
        SIPROUND;
        SIPROUND;
        SIPROUND;
        SIPROUND;
        return v0 ^ v1 ^ v2 ^ v3;
}

size_t iphash_address(const struct sockaddr *sa, socklen_t len, uint8_t ret[static IPHASH_ADDRESS_MAX]) {
        if (!sa || len < (socklen_t) sizeof(sa_family_t))
                return 0;
        if (sa->sa_family == AF_INET && len >= (socklen_t) sizeof(struct sockaddr_in)) {
                const struct sockaddr_in *in = (const struct sockaddr_in *) sa;
                memcpy(ret, &in->sin_addr, 4);
                return 4;
        }
        if (sa->sa_family == AF_INET6 && len >= (socklen_t) sizeof(struct sockaddr_in6)) {
                const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *) sa;
                if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
                        memcpy(ret, in6->sin6_addr.s6_addr + 12, 4);
                        return 4;
                }
                memcpy(ret, &in6->sin6_addr, 16);
                return 16;
        }
        return 0;
}

bool iphash_of(const struct sockaddr *sa, socklen_t len, const uint8_t key[static IPHASH_KEY_SIZE],
               uint64_t *ret) {
        uint8_t a[IPHASH_ADDRESS_MAX];
        size_t n = iphash_address(sa, len, a);
        if (n == 0)
                return false;
        *ret = iphash_siphash24(a, n, key);
        return true;
}

/* Jump consistent hash, as in the paper ("A Fast, Minimal Memory,
 * Consistent Hash Algorithm", arXiv:1406.2294): O(log n) steps of a
 * linear congruential generator seeded by the hash. */
unsigned iphash_slot(uint64_t hash, unsigned n) {
        unsigned b = 0;
        if (n <= 1)
                return 0;
        for (;;) {
                hash = hash * UINT64_C(2862933555777941757) + 1;
                /* The next jump, compared as a double: for n near 2^32 it
                 * can exceed what an integer conversion may take. */
                double j = (double) b + 1.0;
                j *= (double) (UINT64_C(1) << 31) / (double) ((hash >> 33) + 1);
                if (j >= (double) n)
                        return b;
                b = (unsigned) j;
        }
}

int iphash_deliver(uint64_t hash, unsigned n, bool (*take)(unsigned slot, void *userdata), void *userdata) {
        if (n == 0)
                return -1;
        unsigned home = iphash_slot(hash, n);
        for (unsigned k = 0; k < n; k++) {
                unsigned i = (home + k) % n;
                if (take(i, userdata))
                        return (int) i;
        }
        return -1;
}

void iphash_key_format(const uint8_t key[static IPHASH_KEY_SIZE], char ret[static IPHASH_KEY_STRING_MAX]) {
        static const char hex[] = "0123456789abcdef";
        for (unsigned i = 0; i < IPHASH_KEY_SIZE; i++) {
                ret[2 * i] = hex[key[i] >> 4];
                ret[2 * i + 1] = hex[key[i] & 15];
        }
        ret[2 * IPHASH_KEY_SIZE] = '\0';
}

static int unhex(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -1;
}

int iphash_key_parse(const char *s, uint8_t ret[static IPHASH_KEY_SIZE]) {
        uint8_t k[IPHASH_KEY_SIZE];
        if (!s || strlen(s) != 2 * IPHASH_KEY_SIZE)
                return -EINVAL;
        for (unsigned i = 0; i < IPHASH_KEY_SIZE; i++) {
                int hi = unhex(s[2 * i]), lo = unhex(s[2 * i + 1]);
                if (hi < 0 || lo < 0)
                        return -EINVAL;
                k[i] = (uint8_t) (hi << 4 | lo);
        }
        memcpy(ret, k, sizeof(k));
        return 0;
}
