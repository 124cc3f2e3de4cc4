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
 * at initialisation (even when inert) and after each dlopen the shim makes. Each loaded libcrypto
 * and libssl is searched for the function with OpenSSL 3's version by reading its dynamic symbol
 * table (elfsym.c), in load order, and a library that provides one is pinned (dlopen RTLD_NOLOAD),
 * so that a privately loaded one (dlopen without RTLD_GLOBAL, as Python's _hashlib and _ssl are)
 * stays loaded under the pointer. A hook therefore never calls dlsym, dlopen or dl_iterate_phdr:
 * a pending dlerror() of the program survives its first call, and a fork child whose parent had
 * another thread holding the loader's lock at fork does not wait for it forever. A function not
 * found by the last walk (its library was loaded by a dlopen the shim passed straight through, or
 * while inert) is looked up at each call in the loader's list of objects, read without its lock,
 * until a walk pins it. A hook always calls the real function, whatever the shim is doing; only
 * when no OpenSSL 3 definition is loaded at all does it return what an absent function would give
 * a caller that checks (NULL, 0). No OpenSSL header is needed: the types are opaque here.
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

static const ElfW(Dyn) *dynamic_of(const struct dl_phdr_info *info)
{
    for (int i = 0; i < info->dlpi_phnum; i++)
        if (info->dlpi_phdr[i].p_type == PT_DYNAMIC)
            return (const ElfW(Dyn) *)(info->dlpi_addr + info->dlpi_phdr[i].p_vaddr);
    return NULL;
}

enum { LIBS_MAX = 4 };

/* What one pass over the loaded objects found: the functions still missing, and the libraries
 * (their loader names) that provide them. The callback runs under the loader's lock: it only
 * reads memory and copies. */
struct crypto_search {
    void *found[FN_COUNT];
    int lib_of[FN_COUNT];
    char path[LIBS_MAX][CALLER_MAX];
    int n;
};

static int find_functions(struct dl_phdr_info *info, size_t size, void *data)
{
    struct crypto_search *q = data;
    (void)size;
    if (!is_openssl(info->dlpi_name) || q->n >= LIBS_MAX)
        return 0;
    size_t len = strlen(info->dlpi_name);
    if (len >= CALLER_MAX)
        return 0;
    const ElfW(Dyn) *dyn = dynamic_of(info);
    int used = 0;
    for (unsigned fn = FN_FIRST_CRYPTO; fn < FN_COUNT; fn++) {
        if (q->found[fn] != NULL || __atomic_load_n(&crypto_slot[fn], __ATOMIC_RELAXED) != NULL)
            continue;
        void *p = shim_elf_symbol(info->dlpi_addr, dyn, crypto_name[fn], OPENSSL_3_VERSION);
        if (p != NULL) {
            q->found[fn] = p;
            q->lib_of[fn] = q->n;
            used = 1;
        }
    }
    if (used)
        memcpy(q->path[q->n++], info->dlpi_name, len + 1);
    return 0;
}

void crypto_resolve_loaded(void)
{
    unsigned fn;
    for (fn = FN_FIRST_CRYPTO; fn < FN_COUNT; fn++)
        if (__atomic_load_n(&crypto_slot[fn], __ATOMIC_RELAXED) == NULL)
            break;
    if (fn == FN_COUNT)
        return; /* all found */
    int saved = errno;
    int busy = shim_busy;
    shim_busy = 1; /* the dlopen below passes through the shim's own hook unobserved */
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    struct crypto_search q;
    memset(&q, 0, sizeof q);
    dl_iterate_phdr(find_functions, &q);
    for (int i = 0; i < q.n; i++) {
        /* Pinned: a library loaded privately could otherwise be unloaded under the pointers. It
         * is loaded, so this succeeds and leaves no error for dlerror(). */
        if (dlopen(q.path[i], RTLD_LAZY | RTLD_NOLOAD) == NULL) {
            (void)dlerror(); /* ours: the program's dlopen just succeeded, or has not run yet */
            continue;
        }
        for (fn = FN_FIRST_CRYPTO; fn < FN_COUNT; fn++) {
            if (q.found[fn] == NULL || q.lib_of[fn] != i)
                continue;
            __atomic_store_n(&call_impl[fn], q.found[fn], __ATOMIC_RELAXED);
            __atomic_store_n(&crypto_slot[fn], q.found[fn], __ATOMIC_RELEASE);
        }
    }
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    shim_busy = busy;
    errno = saved;
}

/* A hook's function not found at the last walk (OpenSSL loaded by a dlopen the shim passed
 * straight through, or while the shim is inert): looked up in the loader's list of objects, read
 * without its lock (a debugger's way), for this call only, since that library is not pinned. No
 * loader call, no system call, dlerror() untouched. NULL when no loaded OpenSSL 3 provides it. */
static __attribute__((noinline, cold)) void *crypto_unresolved(unsigned fn)
{
    for (const struct link_map *l = _r_debug.r_map; l != NULL; l = l->l_next) {
        if (!is_openssl(l->l_name))
            continue;
        void *p = shim_elf_symbol((uintptr_t)l->l_addr, l->l_ld, crypto_name[fn], OPENSSL_3_VERSION);
        if (p != NULL) {
            __atomic_store_n(&call_impl[fn], p, __ATOMIC_RELAXED);
            return p;
        }
    }
    return NULL;
}

/* The real function of hook `fn`. Never calls the loader and never depends on the shim's state:
 * a hook called while the shim is busy on this thread (from a signal handler, from a name
 * lookup's resolver), or in a fork child, still gets it. */
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
