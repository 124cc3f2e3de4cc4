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
 * its own use) are not reported. The hooks exist only where a program loads OpenSSL; the real
 * functions are found with dlvsym(RTLD_NEXT, name, OPENSSL_3_VERSION), or, for a library loaded
 * privately (dlopen without RTLD_GLOBAL, as Python's _hashlib and _ssl are), in the loaded library
 * itself, with the same version, which then stays loaded for the life of the process. A hook
 * always calls the real function, whatever the shim is doing; only when no OpenSSL 3 definition
 * is loaded at all does it return what an absent function would give a caller that checks (NULL,
 * 0). No OpenSSL header is needed: the types are opaque here.
 */
#include "calls.h"

#include <dlfcn.h>
#include <link.h>
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

enum { LIBS_MAX = 4 };

struct lib_search {
    char path[LIBS_MAX][CALLER_MAX];
    int n;
};

/* Collects the paths of the loaded libcrypto and libssl libraries. */
static int find_openssl(struct dl_phdr_info *info, size_t size, void *data)
{
    struct lib_search *q = data;
    (void)size;
    const char *name = info->dlpi_name;
    if (name == NULL || *name == '\0' || q->n >= LIBS_MAX)
        return 0;
    const char *base = strrchr(name, '/');
    base = base ? base + 1 : name;
    if (strncmp(base, "libcrypto.so", 12) != 0 && strncmp(base, "libssl.so", 9) != 0)
        return 0;
    size_t n = strlen(name);
    if (n >= CALLER_MAX)
        return 0;
    memcpy(q->path[q->n++], name, n + 1);
    return 0;
}

/* Looks `name` up in the loaded OpenSSL libraries themselves (for libraries that are not in the
 * global scope). */
static void *private_symbol(const char *name)
{
    struct lib_search q = {.n = 0};
    dl_iterate_phdr(find_openssl, &q);
    for (int i = 0; i < q.n; i++) {
        void *h = dlopen(q.path[i], RTLD_LAZY | RTLD_NOLOAD);
        if (h == NULL)
            continue;
        void *p = dlvsym(h, name, OPENSSL_3_VERSION); /* h stays open: p stays valid */
        if (p != NULL)
            return p;
    }
    return NULL;
}

/* The real function of hook `fn`, resolved on first use; NULL only when no loaded OpenSSL 3
 * provides it. Does not depend on the shim's state: a hook called while the shim is busy on this
 * thread (from a signal handler, from a name lookup's resolver) still gets the real function. */
static void *crypto_real(void **slot, unsigned fn, const char *name)
{
    void *p = __atomic_load_n(slot, __ATOMIC_RELAXED);
    if (SHIM_LIKELY(p != NULL))
        return p;
    int saved = errno;
    int busy = shim_busy;
    shim_busy = 1; /* the loader's own calls, and private_symbol's dlopen, are not observed */
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    p = dlvsym(RTLD_NEXT, name, OPENSSL_3_VERSION);
    if (p == NULL)
        p = private_symbol(name);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    shim_busy = busy; /* as it was: a hook called while the shim is busy leaves it busy */
    if (p != NULL) {
        __atomic_store_n(&call_impl[fn], p, __ATOMIC_RELAXED);
        __atomic_store_n(slot, p, __ATOMIC_RELAXED);
    }
    errno = saved;
    return p;
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
    static void *real_##name;                                                                \
    SHIM_EXPORT const void *name(void)                                                       \
    {                                                                                        \
        const void *site = __builtin_return_address(0);                                     \
        getter_fn f = (getter_fn)crypto_real(&real_##name, fn, #name);                       \
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
    static void *real_##name;                                                                \
    SHIM_EXPORT void *name(void *ctx, const char *algorithm, const char *properties)         \
    {                                                                                        \
        const void *site = __builtin_return_address(0);                                     \
        fetch_fn f = (fetch_fn)crypto_real(&real_##name, fn, #name);                         \
        unsigned weak = weak_name(algorithm);                                                \
        if (weak != W_NONE && !non_fips(properties))                                         \
            call_seen(fn, weak, site);                                                       \
        return f ? f(ctx, algorithm, properties) : NULL;                                     \
    }

FETCH_HOOK(EVP_MD_fetch, FN_EVP_MD_FETCH)
FETCH_HOOK(EVP_CIPHER_fetch, FN_EVP_CIPHER_FETCH)

#define CTRL_HOOK(name, fn)                                                                  \
    static void *real_##name;                                                                \
    SHIM_EXPORT long name(void *obj, int cmd, long larg, void *parg)                         \
    {                                                                                        \
        const void *site = __builtin_return_address(0);                                     \
        ctrl_fn f = (ctrl_fn)crypto_real(&real_##name, fn, #name);                           \
        if (cmd == SSL_CTRL_SET_MIN_PROTO_VERSION) {                                         \
            unsigned weak = weak_version(larg);                                              \
            if (weak != W_NONE)                                                              \
                call_seen(fn, weak, site);                                                   \
        }                                                                                    \
        return f ? f(obj, cmd, larg, parg) : 0;                                              \
    }

CTRL_HOOK(SSL_CTX_ctrl, FN_SSL_CTX_CTRL)
CTRL_HOOK(SSL_ctrl, FN_SSL_CTRL)
