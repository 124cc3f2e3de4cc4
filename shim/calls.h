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

/* One call site: its identity is the return address and what was called (fn << 8 | weak).
 * `site` is claimed first (0: empty), then `what` is set (0 until then); repeats not yet reported,
 * and state. */
struct call_slot {
    uintptr_t site;
    uint32_t what;
    uint32_t pending;
    uint32_t state;
};

enum { CALL_BITS = 10, CALL_SLOTS = 1 << CALL_BITS, CALL_INLINE_PROBES = 4 };

extern struct call_slot call_slots[CALL_SLOTS];

/* The implementation each crypto hook calls (its module is the CRYPTO record's LIBRARY). */
extern const void *call_impl[FN_COUNT];

static inline uint32_t call_what(unsigned fn, unsigned weak)
{
    return (uint32_t)(fn << 8 | weak);
}

/* The slot a site's probe sequence starts at. */
static inline unsigned call_home(uintptr_t site, uint32_t what)
{
    return (unsigned)((((uint64_t)site ^ ((uint64_t)what << 48)) * HASH_MUL) >> (64 - CALL_BITS));
}

/* A call whose site is not in its first slots: probes further (no system call), and reports a
 * new site. */
void call_slow(uintptr_t site, uint32_t what);
void call_tick(void);

static inline void call_count(struct call_slot *s)
{
    uint32_t before = __atomic_fetch_add(&s->pending, 1, __ATOMIC_RELAXED);
    if (SHIM_UNLIKELY((before & 4095) == 4095))
        call_tick(); /* a periodic chance to flush repeat counts */
}

/* Counts a call of `fn` (using `weak`) from `site`: the first call from a site is reported, the
 * others counted. The common case (a site already in one of its first slots) is a few loads and
 * one atomic add, with no system call. */
static inline void call_seen(unsigned fn, unsigned weak, const void *site)
{
    uintptr_t a = (uintptr_t)site;
    uint32_t what = call_what(fn, weak);
    unsigned i = call_home(a, what);
    for (unsigned probe = 0; probe < CALL_INLINE_PROBES; probe++) {
        struct call_slot *s = &call_slots[i];
        uintptr_t k = __atomic_load_n(&s->site, __ATOMIC_ACQUIRE);
        if (k == 0)
            break; /* an empty slot ends the sequence: a new site */
        if (SHIM_LIKELY(k == a) && __atomic_load_n(&s->what, __ATOMIC_ACQUIRE) == what) {
            call_count(s);
            return;
        }
        i = (i + 1) & (CALL_SLOTS - 1);
    }
    if (SHIM_LIKELY(__atomic_load_n(&shim_init_state, __ATOMIC_RELAXED) == INIT_DONE) &&
        !shim_active)
        return; /* inert */
    call_slow(a, what);
}

/* Resolves dlsym(RTLD_NEXT, name) into *slot with the shim marked busy (so that whatever the
 * loader calls is not observed); NULL when the symbol does not exist, or when called back from
 * within a resolution on this thread. */
void *call_resolve(void **slot, const char *name);

/* Resolves the real function of every hook of calls.c, once at initialisation (shim.c), even when
 * the shim is inert: a dlsym made later, at a hook's first call, would clear the program's pending
 * dlerror(). */
void calls_resolve(void);

/* Finds the OpenSSL 3 functions the crypto hooks stand for in the libraries loaded now, pinning
 * those libraries first (hooks_crypto.c). Called at initialisation (even when inert) and after
 * every dlopen that returns through the shim's hook (even when inert); never from a hook's call
 * path, nor with the loader's lock held. Takes the loader's lock; makes loader calls that succeed
 * (a program's pending dlerror() is only ever read right after its own dlopen succeeded). */
void crypto_resolve_loaded(void);
/* Every dlopen and dlmopen hook calls it, before the call: something new may be loaded. */
void crypto_note_dlopen(void);

/* The address of the function `name` of symbol version `version` defined by the loaded object at
 * `base` whose dynamic section is `dynamic`, its d_ptr entries `relocated` in place or not
 * (shim_dynamic_relocated) (elfsym.c); NULL when it defines none. Reads memory only: no lock, no
 * system call, no allocation. */
void *shim_elf_symbol(uintptr_t base, const void *dynamic, int relocated, const char *name,
                      const char *version);

#endif /* TELLTALE_CALLS_H */
