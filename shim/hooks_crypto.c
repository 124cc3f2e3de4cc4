/* Weak cryptography: OpenSSL entry points that select a broken algorithm or allow an old protocol
 * version, reported as CRYPTO records by call site (calls.c).
 *
 * - digests: EVP_md4, EVP_md5, EVP_sha1 (purpose "digest": a digest's use, checksum or
 *   signature, is not visible at this point);
 * - ciphers: EVP_des_ecb, EVP_des_cbc, EVP_des_ede3_cbc, EVP_rc4 (purpose "cipher");
 * - by name: EVP_MD_fetch, EVP_CIPHER_fetch (OpenSSL 3), when the name is a weak algorithm. A fetch whose property query asks
 *   for a non-FIPS implementation ("-fips", which is how Python's usedforsecurity=False is
 *   expressed) is not reported;
 * - TLS: SSL_CTX_ctrl and SSL_ctrl setting the minimum protocol version (the
 *   SSL_CTX_set_min_proto_version and SSL_set_min_proto_version macros) below TLS 1.2, and
 *   TLSv1_method, TLSv1_1_method (purpose "tls").
 *
 * The hooks carry OpenSSL 3's symbol version (OPENSSL_3_VERSION, shim.map): only references
 * bound to OpenSSL 3 (or unversioned ones) reach them, so code linked against another OpenSSL
 * (1.1's OPENSSL_1_1_0) or another library exporting these names keeps its own definitions, and
 * is not observed. The deprecated low-level digest calls (MD5, MD5_Init, SHA1, SHA1_Init) are not
 * hooked: those names are also exported, with other structure layouts, by libraries that are not
 * OpenSSL, so they are not observed.
 *
 * Calls made by OpenSSL's own libraries (libcrypto*, libssl*: libssl fetches MD5 and SHA-1 for
 * its own use) are not reported. The hooks exist only where a program loads OpenSSL.
 *
 * The real functions are found ahead of the calls, where the shim walks the loaded objects anyway:
 * at initialisation (even when inert) and after every dlopen that returns through the shim's hook
 * (even when inert). Each loaded libcrypto and libssl is first pinned (dlopen RTLD_NOLOAD), so that
 * a privately loaded one (dlopen without RTLD_GLOBAL, as Python's _hashlib and _ssl are) stays
 * loaded under the pointer, then searched, through the pinned handle's own link_map, for the
 * function with OpenSSL 3's version by reading its dynamic symbol table (elfsym.c), in load order.
 * A hook's call is then one load: it never calls dlsym, dlopen or dl_iterate_phdr, leaves a
 * pending dlerror() alone and never waits for the loader's lock (which a fork child can find held
 * for good), and never reads the loader's list of objects without its lock. Only an OpenSSL
 * brought in by a dlopen the shim passed straight to the loader (a bare name), with no dlopen
 * through the hook since, is looked for at the call (crypto_unresolved, once). A hook always calls
 * the real function, whatever the shim is doing; only when no OpenSSL 3 definition is loaded at
 * all does it return what an absent function would give
 * a caller that checks (NULL, 0). No OpenSSL header is needed: the types are opaque here.
 */
#include "calls.h"

#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <strings.h>

/* OpenSSL's values (ssl.h, prov/tls1.h, ssl3.h). */
enum {
    SSL_CTRL_SET_MIN_PROTO_VERSION = 123,
    SSL2_VERSION = 0x0002,
    SSL3_VERSION = 0x0300,
    TLS1_VERSION = 0x0301,
    TLS1_1_VERSION = 0x0302,
};

/* The symbol version of the OpenSSL the hooks stand for (shim.map's version node). */
#define OPENSSL_3_VERSION "OPENSSL_3.0.0"

typedef const void *(*getter_fn)(void);
typedef void *(*fetch_fn)(void *, const char *, const char *);
typedef long (*ctrl_fn)(void *, int, long, void *);

/* ---- finding the real functions -------------------------------------------------------------- */

/* Each hook's real function (by FN_*), once found in a library the shim has pinned; NULL until
 * then. Written at initialisation and after the dlopen calls the shim makes, read by the hooks. */
static void *crypto_slot[FN_COUNT];

static const char *const crypto_name[FN_COUNT] = {
    [FN_EVP_MD4] = "EVP_md4",
    [FN_EVP_MD5] = "EVP_md5",
    [FN_EVP_SHA1] = "EVP_sha1",
    [FN_EVP_DES_ECB] = "EVP_des_ecb",
    [FN_EVP_DES_CBC] = "EVP_des_cbc",
    [FN_EVP_DES_EDE3_CBC] = "EVP_des_ede3_cbc",
    [FN_EVP_RC4] = "EVP_rc4",
    [FN_EVP_MD_FETCH] = "EVP_MD_fetch",
    [FN_EVP_CIPHER_FETCH] = "EVP_CIPHER_fetch",
    [FN_SSL_CTX_CTRL] = "SSL_CTX_ctrl",
    [FN_SSL_CTRL] = "SSL_ctrl",
    [FN_TLSV1_METHOD] = "TLSv1_method",
    [FN_TLSV1_1_METHOD] = "TLSv1_1_method",
};

/* 1 when an object of this loader name is an OpenSSL library (libcrypto.so*, libssl.so*). */
static int is_openssl(const char *name)
{
    if (name == NULL || *name == '\0')
        return 0;
    const char *base = strrchr(name, '/');
    base = base ? base + 1 : name;
    return strncmp(base, "libcrypto.so", 12) == 0 || strncmp(base, "libssl.so", 9) == 0;
}

enum { LIBS_MAX = 4 };

/* The loader names of the OpenSSL libraries loaded now (at most LIBS_MAX). The callback runs
 * under the loader's lock: it only reads and copies. */
struct crypto_names {
    char path[LIBS_MAX][CALLER_MAX];
    int n;
};

static int collect_openssl(struct dl_phdr_info *info, size_t size, void *data)
{
    struct crypto_names *q = data;
    (void)size;
    if (!is_openssl(info->dlpi_name) || q->n >= LIBS_MAX)
        return 0;
    size_t len = strlen(info->dlpi_name);
    if (len < CALLER_MAX)
        memcpy(q->path[q->n++], info->dlpi_name, len + 1);
    return 0;
}

/* 1 when every hook's slot is filled. */
static int crypto_all_found(void)
{
    for (unsigned fn = FN_FIRST_CRYPTO; fn < FN_COUNT; fn++)
        if (__atomic_load_n(&crypto_slot[fn], __ATOMIC_ACQUIRE) == NULL)
            return 0;
    return 1;
}

/* Pins the loaded library `name` (a loader name, or an OpenSSL soname), then fills the empty
 * slots from the pinned object's own link_map: pinned first, so the object read is the one that
 * stays loaded (a dlclose and reload between a lookup and a pin would otherwise leave a slot
 * pointing into the unloaded copy). Returns the number of slots filled; the library stays pinned
 * only when it filled one. With the shim busy; makes loader calls (the loader's lock). */
static int crypto_pin_and_fill(const char *name)
{
    void *h = dlopen(name, RTLD_LAZY | RTLD_NOLOAD);
    if (h == NULL) {
        (void)dlerror(); /* ours */
        return 0;
    }
    struct link_map *lm = NULL;
    int filled = 0;
    if (dlinfo(h, RTLD_DI_LINKMAP, &lm) == 0 && lm != NULL && is_openssl(lm->l_name)) {
        int relocated = shim_dynamic_relocated(lm->l_ld);
        for (unsigned fn = FN_FIRST_CRYPTO; fn < FN_COUNT; fn++) {
            if (__atomic_load_n(&crypto_slot[fn], __ATOMIC_ACQUIRE) != NULL)
                continue;
            void *p = shim_elf_symbol((uintptr_t)lm->l_addr, lm->l_ld, relocated,
                                      crypto_name[fn], OPENSSL_3_VERSION);
            if (p == NULL)
                continue;
            void *expected = NULL;
            __atomic_store_n(&call_impl[fn], p, __ATOMIC_RELAXED);
            if (__atomic_compare_exchange_n(&crypto_slot[fn], &expected, p, 0, __ATOMIC_RELEASE,
                                            __ATOMIC_ACQUIRE))
                filled++;
            else
                __atomic_store_n(&call_impl[fn], expected, __ATOMIC_RELAXED);
        }
    } else {
        (void)dlerror();
    }
    if (filled == 0)
        dlclose(h); /* nothing of it is used: not pinned */
    return filled;
}

/* The offset from the thread pointer of glibc's pending-dlerror() state (__libc_dlerror_result,
 * GLIBC_PRIVATE, glibc 2.34 and later: a pointer, NULL when no error is pending), in libc's static
 * TLS; 0 when unknown. Found at initialisation (crypto_resolve_loaded's first run). */
static intptr_t dlerror_state_offset;
static int dlerror_state_looked;

static void dlerror_state_find(void)
{
    if (__atomic_load_n(&dlerror_state_looked, __ATOMIC_ACQUIRE))
        return;
    void *p = dlvsym(RTLD_DEFAULT, "__libc_dlerror_result", "GLIBC_PRIVATE");
    (void)dlerror();
    if (p != NULL)
        __atomic_store_n(&dlerror_state_offset,
                         (intptr_t)((char *)p - (char *)__builtin_thread_pointer()), __ATOMIC_RELAXED);
    __atomic_store_n(&dlerror_state_looked, 1, __ATOMIC_RELEASE);
}

/* This thread's pending-dlerror() state, or NULL when unknown. */
static void **dlerror_state(void)
{
    intptr_t off = __atomic_load_n(&dlerror_state_offset, __ATOMIC_RELAXED);
    return off != 0 ? (void **)((char *)__builtin_thread_pointer() + off) : NULL;
}

enum { OPENSSL_SONAMES = 2 };
static const char *const openssl_sonames[OPENSSL_SONAMES] = {"libcrypto.so.3", "libssl.so.3"};

/* 1 in a fork child: dl_iterate_phdr's lock (which glibc does not re-initialise there, unlike
 * dlopen's) may be held for good by a thread of the parent. */
static int crypto_forked;

static void crypto_atfork_child(void)
{
    __atomic_store_n(&crypto_forked, 1, __ATOMIC_RELAXED);
}

void crypto_resolve_loaded(void)
{
    static int once;
    if (!__atomic_exchange_n(&once, 1, __ATOMIC_ACQ_REL)) { /* at initialisation */
        dlerror_state_find();
        if (pthread_atfork(NULL, NULL, crypto_atfork_child) != 0)
            crypto_atfork_child(); /* never walk with dl_iterate_phdr then */
    }
    if (crypto_all_found())
        return;
    int saved = errno;
    int busy = shim_busy;
    shim_busy = 1; /* the dlopen below passes through the shim's own hook unobserved */
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    struct crypto_names q;
    q.n = 0;
    if (!__atomic_load_n(&crypto_forked, __ATOMIC_RELAXED)) {
        dl_iterate_phdr(collect_openssl, &q);
    } else { /* OpenSSL 3 by its sonames */
        for (unsigned i = 0; i < OPENSSL_SONAMES; i++)
            memcpy(q.path[q.n++], openssl_sonames[i], strlen(openssl_sonames[i]) + 1);
    }
    for (int i = 0; i < q.n && !crypto_all_found(); i++)
        (void)crypto_pin_and_fill(q.path[i]); /* in load order: the first definition wins */
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    shim_busy = busy;
    errno = saved;
}

/* Bumped by every dlopen and dlmopen through the shim's hooks (passed straight through or not):
 * a slot a fallback could not fill is only looked for again once something new can be loaded. */
static unsigned crypto_loads;
static unsigned crypto_missed_at[FN_COUNT]; /* crypto_loads + 1 when the fallback last failed */

void crypto_note_dlopen(void)
{
    __atomic_fetch_add(&crypto_loads, 1, __ATOMIC_RELAXED);
}

/* The fallback of a hook whose slot is empty. Practically unreachable: every dlopen that returns
 * through the shim's hook, and the start, fills the slots of every OpenSSL 3 then loaded; a hook
 * only runs where OpenSSL 3 is loaded, so it can only get here when that OpenSSL was brought in by
 * a dlopen passed straight to the loader (a bare name, which the shim cannot call itself without
 * changing its search path) and no dlopen has returned through the hook since. Then, like a walk:
 * the OpenSSL 3 libraries are pinned by soname (dlopen RTLD_NOLOAD: the loader's lock, which
 * glibc re-initialises in a fork child; never dl_iterate_phdr, whose lock it does not) and their
 * symbols read; failing that, dlvsym(RTLD_NEXT) for this call only. The real function is
 * returned whenever one is loaded. Costs loader calls once per library brought in this way.
 * A dlerror() the program has not read yet is set aside meanwhile and put back (glibc's
 * __libc_dlerror_result, 2.34 and later); with an older glibc it may be consumed. Unlike the
 * hooks' usual path, this is not async-signal-safe: a signal handler making such a first call
 * while its thread is inside the loader or malloc could deadlock. */
static __attribute__((noinline, cold)) void *crypto_unresolved(unsigned fn)
{
    unsigned loads = __atomic_load_n(&crypto_loads, __ATOMIC_RELAXED);
    if (__atomic_load_n(&crypto_missed_at[fn], __ATOMIC_RELAXED) == loads + 1)
        return NULL; /* looked for since the last dlopen: none */
    int saved = errno;
    int busy = shim_busy;
    shim_busy = 1;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    void **pending = dlerror_state();
    void *program_error = NULL;
    if (pending != NULL) { /* set aside: our loader calls then neither clear nor replace it */
        program_error = *pending;
        *pending = NULL;
    }
    void *p = NULL;
    for (unsigned i = 0; i < OPENSSL_SONAMES && p == NULL; i++) {
        (void)crypto_pin_and_fill(openssl_sonames[i]);
        p = __atomic_load_n(&crypto_slot[fn], __ATOMIC_ACQUIRE);
    }
    if (p == NULL) {
        p = dlvsym(RTLD_NEXT, crypto_name[fn], OPENSSL_3_VERSION);
        if (p != NULL)
            __atomic_store_n(&call_impl[fn], p, __ATOMIC_RELAXED);
        else
            __atomic_store_n(&crypto_missed_at[fn], loads + 1, __ATOMIC_RELAXED);
    }
    while (dlerror() != NULL) /* ours: the second call frees it */
        ;
    if (pending != NULL)
        *pending = program_error;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    shim_busy = busy;
    errno = saved;
    return p;
}

/* The real function of hook `fn`: a load. A hook called while the shim is busy on this thread
 * (from a signal handler, from a name lookup's resolver), or in a fork child, gets it too. */
static inline void *crypto_real(unsigned fn)
{
    void *p = __atomic_load_n(&crypto_slot[fn], __ATOMIC_ACQUIRE);
    if (SHIM_LIKELY(p != NULL))
        return p;
    return crypto_unresolved(fn);
}

/* ---- classifying names --------------------------------------------------------------------------- */

/* The weak algorithm a digest or cipher name stands for (case, '-', '_' and ' ' ignored). */
static unsigned weak_name(const char *name)
{
    if (name == NULL)
        return W_NONE;
    char t[24];
    size_t n = 0;
    for (size_t i = 0; name[i] != '\0' && n < sizeof t - 1 && i < 64; i++) {
        char c = name[i];
        if (c == '-' || c == '_' || c == ' ')
            continue;
        t[n++] = (char)(c >= 'a' && c <= 'z' ? c - 'a' + 'A' : c);
    }
    t[n] = '\0';
#define STARTS(p) (strncmp(t, p, sizeof p - 1) == 0)
    if (STARTS("MD5"))
        return W_MD5;
    if (STARTS("MD4"))
        return W_MD4;
    if (strcmp(t, "SHA1") == 0 || strcmp(t, "SHA") == 0)
        return W_SHA1;
    if (STARTS("DESEDE") || STARTS("DES3") || STARTS("3DES") || STARTS("TRIPLEDES"))
        return W_3DES;
    if (STARTS("DES"))
        return W_DES;
    if (STARTS("RC4"))
        return W_RC4;
    if (STARTS("RC2"))
        return W_RC2;
    if (STARTS("BLOWFISH") || strcmp(t, "BF") == 0 || STARTS("BFCBC") || STARTS("BFECB") ||
        STARTS("BFCFB") || STARTS("BFOFB"))
        return W_BLOWFISH;
#undef STARTS
    return W_NONE;
}

static unsigned weak_version(long version)
{
    switch (version) {
    case SSL2_VERSION:
        return W_SSLV2;
    case SSL3_VERSION:
        return W_SSLV3;
    case TLS1_VERSION:
        return W_TLSV1_0;
    case TLS1_1_VERSION:
        return W_TLSV1_1;
    default:
        return W_NONE;
    }
}

/* ---- hooks ------------------------------------------------------------------------------------ */

#define GETTER_HOOK(name, fn, weak)                                                          \
    SHIM_EXPORT const void *name(void)                                                       \
    {                                                                                        \
        const void *site = __builtin_return_address(0);                                     \
        getter_fn f = (getter_fn)crypto_real(fn);                       \
        call_seen(fn, weak, site);                                                           \
        return f ? f() : NULL;                                                               \
    }

GETTER_HOOK(EVP_md4, FN_EVP_MD4, W_MD4)
GETTER_HOOK(EVP_md5, FN_EVP_MD5, W_MD5)
GETTER_HOOK(EVP_sha1, FN_EVP_SHA1, W_SHA1)
GETTER_HOOK(EVP_des_ecb, FN_EVP_DES_ECB, W_DES)
GETTER_HOOK(EVP_des_cbc, FN_EVP_DES_CBC, W_DES)
GETTER_HOOK(EVP_des_ede3_cbc, FN_EVP_DES_EDE3_CBC, W_3DES)
GETTER_HOOK(EVP_rc4, FN_EVP_RC4, W_RC4)
GETTER_HOOK(TLSv1_method, FN_TLSV1_METHOD, W_TLSV1_0)
GETTER_HOOK(TLSv1_1_method, FN_TLSV1_1_METHOD, W_TLSV1_1)

/* 1 when a property query asks for a non-FIPS implementation. */
static int non_fips(const char *properties)
{
    return properties != NULL && strstr(properties, "-fips") != NULL;
}

#define FETCH_HOOK(name, fn)                                                                 \
    SHIM_EXPORT void *name(void *ctx, const char *algorithm, const char *properties)         \
    {                                                                                        \
        const void *site = __builtin_return_address(0);                                     \
        fetch_fn f = (fetch_fn)crypto_real(fn);                         \
        unsigned weak = weak_name(algorithm);                                                \
        if (weak != W_NONE && !non_fips(properties))                                         \
            call_seen(fn, weak, site);                                                       \
        return f ? f(ctx, algorithm, properties) : NULL;                                     \
    }

FETCH_HOOK(EVP_MD_fetch, FN_EVP_MD_FETCH)
FETCH_HOOK(EVP_CIPHER_fetch, FN_EVP_CIPHER_FETCH)

#define CTRL_HOOK(name, fn)                                                                  \
    SHIM_EXPORT long name(void *obj, int cmd, long larg, void *parg)                         \
    {                                                                                        \
        const void *site = __builtin_return_address(0);                                     \
        ctrl_fn f = (ctrl_fn)crypto_real(fn);                           \
        if (cmd == SSL_CTRL_SET_MIN_PROTO_VERSION) {                                         \
            unsigned weak = weak_version(larg);                                              \
            if (weak != W_NONE)                                                              \
                call_seen(fn, weak, site);                                                   \
        }                                                                                    \
        return f ? f(obj, cmd, larg, parg) : 0;                                              \
    }

CTRL_HOOK(SSL_CTX_ctrl, FN_SSL_CTX_CTRL)
CTRL_HOOK(SSL_ctrl, FN_SSL_CTRL)
