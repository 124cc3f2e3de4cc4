/* Library calls observed per call site (calls.c): unsafe C library functions (UNSAFE_CALL) and
 * weak cryptography (CRYPTO). Private to calls.c and hooks_crypto.c. */
#ifndef TELLTALE_CALLS_H
#define TELLTALE_CALLS_H

#include "shim.h"

/* Hooked functions. The order is the index into calls.c's descriptor table. */
enum call_fn {
    FN_GETS = 1,
    FN_STRCPY,
    FN_STRCAT,
    FN_STPCPY,
    FN_SPRINTF,
    FN_VSPRINTF,
    FN_GETWD,
    FN_MKTEMP,
    FN_TMPNAM,
    FN_TEMPNAM,
    FN_FIRST_CRYPTO,
    FN_EVP_MD4 = FN_FIRST_CRYPTO,
    FN_EVP_MD5,
    FN_EVP_SHA1,
    FN_MD5,
    FN_MD5_INIT,
    FN_SHA1,
    FN_SHA1_INIT,
    FN_EVP_DES_ECB,
    FN_EVP_DES_CBC,
    FN_EVP_DES_EDE3_CBC,
    FN_EVP_RC4,
    FN_EVP_MD_FETCH,
    FN_EVP_CIPHER_FETCH,
    FN_SSL_CTX_CTRL,
    FN_SSL_CTRL,
    FN_TLSV1_METHOD,
    FN_TLSV1_1_METHOD,
    FN_COUNT,
};

/* What a CRYPTO call uses or allows: an algorithm or a protocol version (0: nothing weak). */
enum call_weak {
    W_NONE = 0,
    W_MD4,
    W_MD5,
    W_SHA1,
    W_DES,
    W_3DES,
    W_RC2,
    W_RC4,
    W_BLOWFISH,
    W_FIRST_PROTOCOL,
    W_SSLV2 = W_FIRST_PROTOCOL,
    W_SSLV3,
    W_TLSV1_0,
    W_TLSV1_1,
    W_COUNT,
};

/* One call site: identity key (the return address in the low 48 bits, fn << 56 | weak << 48
 * above; never 0), repeats not yet reported, and state. */
struct call_slot {
    uint64_t key;
    uint32_t pending;
    uint32_t state;
};

enum { CALL_BITS = 10, CALL_SLOTS = 1 << CALL_BITS };

extern struct call_slot call_slots[CALL_SLOTS];

/* The implementation each crypto hook calls (its module is the CRYPTO record's LIBRARY). */
extern const void *call_impl[FN_COUNT];

static inline uint64_t call_key(unsigned fn, unsigned weak, const void *site)
{
    return ((uint64_t)(uintptr_t)site & 0xffffffffffffULL) | ((uint64_t)fn << 56) |
           ((uint64_t)weak << 48);
}

void call_slow(uint64_t key, const void *site);
void call_tick(void);

/* Counts a call of `fn` (using `weak`) from `site`: the first call from a site is reported, the
 * others counted. The common case (a site already in the table) is one load and one atomic add. */
static inline void call_seen(unsigned fn, unsigned weak, const void *site)
{
    uint64_t key = call_key(fn, weak, site);
    struct call_slot *s = &call_slots[(key * HASH_MUL) >> (64 - CALL_BITS)];
    if (SHIM_LIKELY(__atomic_load_n(&s->key, __ATOMIC_RELAXED) == key)) {
        uint32_t before = __atomic_fetch_add(&s->pending, 1, __ATOMIC_RELAXED);
        if (SHIM_UNLIKELY((before & 4095) == 4095))
            call_tick(); /* a periodic chance to flush repeat counts */
        return;
    }
    if (SHIM_LIKELY(__atomic_load_n(&shim_init_state, __ATOMIC_RELAXED) == INIT_DONE) &&
        !shim_active)
        return; /* inert */
    call_slow(key, site);
}

/* Resolves dlsym(RTLD_NEXT, name) into *slot with the shim marked busy (so that whatever the
 * loader calls is not observed); NULL when the symbol does not exist, or when called back from
 * within a resolution on this thread. */
void *call_resolve(void **slot, const char *name);

#endif /* TELLTALE_CALLS_H */
