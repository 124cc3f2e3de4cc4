/* Library calls by call site: the table behind UNSAFE_CALL and CRYPTO records, and the hooks of
 * the unsafe C library functions (gets, strcpy, strcat, stpcpy, sprintf, vsprintf, getwd,
 * mktemp, tmpnam, tempnam).
 *
 * The identity of a call is the function (and, for CRYPTO, the weak algorithm or protocol) and
 * its call site, the return address of the hooked call. The first call from a site sends a
 * record; later ones are counted in the site's slot and flushed as REPEAT summaries with the dedup
 * table's (dedup_flush). The table has its own fixed size (CALL_SLOTS, open addressing, at most
 * CALL_PROBES probes) so that a program with many call sites never fills the behaviour table;
 * a site that finds no slot is counted in call_overflow and not reported.
 *
 * A call from a known site (found in its first CALL_INLINE_PROBES slots inline, further by
 * call_slow) is a hash, a few loads and one atomic add, with no system call and no errno change.
 * Only a new site, claiming a slot and reporting, goes behind shim_enter (so the shim's own use of
 * these functions, and a signal handler interrupting it, are not observed) and asks getpid
 * whether it runs in a process sharing our memory.
 *
 * The hooks report before calling the real function: a gets or strcpy that overflows and crashes
 * has been reported already. They never change what the call does.
 */
#include "calls.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

__thread const void *shim_caller __attribute__((tls_model("initial-exec")));

enum { CALL_PROBES = 16 };
enum { SITE_EMPTY = 0, SITE_CLAIMED = 1, SITE_READY = 2, SITE_IGNORED = 3 };

struct call_slot call_slots[CALL_SLOTS];
const void *call_impl[FN_COUNT];
static uint32_t call_overflow; /* sites not reported: no free slot; atomic */

struct call_desc {
    const char *name;
    const char *purpose; /* CRYPTO only */
};

static const struct call_desc DESCS[FN_COUNT] = {
    [FN_GETS] = {"gets", NULL},
    [FN_STRCPY] = {"strcpy", NULL},
    [FN_STRCAT] = {"strcat", NULL},
    [FN_STPCPY] = {"stpcpy", NULL},
    [FN_SPRINTF] = {"sprintf", NULL},
    [FN_VSPRINTF] = {"vsprintf", NULL},
    [FN_GETWD] = {"getwd", NULL},
    [FN_MKTEMP] = {"mktemp", NULL},
    [FN_TMPNAM] = {"tmpnam", NULL},
    [FN_TEMPNAM] = {"tempnam", NULL},
    [FN_EVP_MD4] = {"EVP_md4", "digest"},
    [FN_EVP_MD5] = {"EVP_md5", "digest"},
    [FN_EVP_SHA1] = {"EVP_sha1", "digest"},
    [FN_EVP_DES_ECB] = {"EVP_des_ecb", "cipher"},
    [FN_EVP_DES_CBC] = {"EVP_des_cbc", "cipher"},
    [FN_EVP_DES_EDE3_CBC] = {"EVP_des_ede3_cbc", "cipher"},
    [FN_EVP_RC4] = {"EVP_rc4", "cipher"},
    [FN_EVP_MD_FETCH] = {"EVP_MD_fetch", "digest"},
    [FN_EVP_CIPHER_FETCH] = {"EVP_CIPHER_fetch", "cipher"},
    [FN_SSL_CTX_CTRL] = {"SSL_CTX_ctrl", "tls"},
    [FN_SSL_CTRL] = {"SSL_ctrl", "tls"},
    [FN_TLSV1_METHOD] = {"TLSv1_method", "tls"},
    [FN_TLSV1_1_METHOD] = {"TLSv1_1_method", "tls"},
};

static const char *const WEAK[W_COUNT] = {
    [W_MD4] = "MD4",       [W_MD5] = "MD5",     [W_SHA1] = "SHA1",       [W_DES] = "DES",
    [W_3DES] = "3DES",     [W_RC2] = "RC2",     [W_RC4] = "RC4",         [W_BLOWFISH] = "Blowfish",
    [W_SSLV2] = "SSLv2",   [W_SSLV3] = "SSLv3", [W_TLSV1_0] = "TLSv1.0", [W_TLSV1_1] = "TLSv1.1",
};

_Static_assert(FN_COUNT < 256 && W_COUNT < 256, "fn and weak must fit a slot's `what`");

static __thread int resolving __attribute__((tls_model("initial-exec")));

void *call_resolve(void **slot, const char *name)
{
    if (resolving)
        return NULL; /* the loader called back into a hook: that call uses the fallback */
    int busy = shim_busy;
    resolving = 1;
    shim_busy = 1;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    void *p = shim_resolve(slot, name) ? __atomic_load_n(slot, __ATOMIC_RELAXED) : NULL;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    shim_busy = busy;
    resolving = 0;
    return p;
}

/* 1 when `path` names one of OpenSSL's own libraries (their internal use is not reported). */
static int is_openssl(const char *path, size_t n)
{
    size_t i = n;
    while (i > 0 && path[i - 1] != '/')
        i--;
    const char *base = path + i;
    size_t blen = n - i;
    return (blen >= 9 && memcmp(base, "libcrypto", 9) == 0) ||
           (blen >= 6 && memcmp(base, "libssl", 6) == 0);
}

/* Builds the record of call `what` from `site` for process `pid`, CALLER included. */
static size_t build_call(uint8_t *buf, size_t cap, uint32_t what, uintptr_t site, int pid,
                         unsigned flags, const char *caller, size_t clen, uintptr_t base)
{
    unsigned fn = what >> 8, weak = what & 0xff;
    const struct call_desc *d = &DESCS[fn < FN_COUNT ? fn : 0];
    struct rec r;
    rec_begin(&r, buf, cap, fn >= FN_FIRST_CRYPTO ? KIND_CRYPTO : KIND_UNSAFE_CALL, pid);
    rec_add_flags(&r, flags);
    if (d->name)
        rec_put_bytes(&r, TAG_FUNCTION, d->name, strlen(d->name), 16);
    uint64_t where = (uint64_t)site - (clen ? (uint64_t)base : 0);
    rec_put(&r, TAG_CALL_SITE, &where, sizeof where);
    if (fn >= FN_FIRST_CRYPTO) {
        const char *w = weak < W_COUNT ? WEAK[weak] : NULL;
        if (w)
            rec_put_bytes(&r, weak >= W_FIRST_PROTOCOL ? TAG_PROTOCOL : TAG_ALGORITHM, w,
                          strlen(w), CRYPTO_WORD_MAX);
        rec_put_bytes(&r, TAG_PURPOSE, d->purpose, strlen(d->purpose), CRYPTO_WORD_MAX);
        const void *impl = fn < FN_COUNT ? __atomic_load_n(&call_impl[fn], __ATOMIC_RELAXED) : NULL;
        char lib[CALLER_MAX + 1];
        uintptr_t lbase;
        size_t llen = impl ? shim_module_of(impl, lib, sizeof lib, &lbase) : 0;
        if (llen)
            rec_put_bytes(&r, TAG_LIBRARY, lib, llen, CALLER_MAX);
    }
    if (clen)
        rec_put_bytes(&r, TAG_CALLER, caller, clen, CALLER_MAX);
    return r.len;
}

enum { CALL_REC_MAX = REC_HEADER_SIZE + 7 * 4 + 16 + 8 + 2 * CRYPTO_WORD_MAX + 2 * CALLER_MAX };

enum { FIND_FOUND = 0, FIND_EMPTY = 1, FIND_NONE = 2 };

/* 1 when slot s (whose site is `site`) holds `what`; waits a little for a claim in progress. */
static int slot_is(struct call_slot *s, uint32_t what)
{
    for (int spin = 0; spin < 1000; spin++) {
        uint32_t w = __atomic_load_n(&s->what, __ATOMIC_ACQUIRE);
        if (w != 0)
            return w == what;
    }
    return 0; /* the claimer was interrupted (perhaps by us, in a signal handler): not ours */
}

/* Looks the site up from its home slot: FIND_FOUND (the call is counted), FIND_EMPTY (*at is the
 * first empty slot of its sequence) or FIND_NONE (every probe taken by other sites). */
static int call_find(uintptr_t site, uint32_t what, unsigned *at)
{
    unsigned i = call_home(site, what);
    for (unsigned probe = 0; probe < CALL_PROBES; probe++, i = (i + 1) & (CALL_SLOTS - 1)) {
        struct call_slot *s = &call_slots[i];
        uintptr_t k = __atomic_load_n(&s->site, __ATOMIC_ACQUIRE);
        if (k == 0) {
            *at = i;
            return FIND_EMPTY;
        }
        if (k == site && slot_is(s, what)) {
            call_count(s);
            return FIND_FOUND;
        }
    }
    return FIND_NONE;
}

/* Claims a slot for the site from slot `i` (an empty one call_find saw): 1 with *claimed set when
 * this call claimed it (the caller reports), 0 when another thread claimed it meanwhile (the call
 * is counted) or no slot is free. */
static int call_claim(uintptr_t site, uint32_t what, unsigned i, struct call_slot **claimed)
{
    unsigned probe = (i - call_home(site, what)) & (CALL_SLOTS - 1);
    for (; probe < CALL_PROBES; probe++, i = (i + 1) & (CALL_SLOTS - 1)) {
        struct call_slot *s = &call_slots[i];
        uintptr_t k = __atomic_load_n(&s->site, __ATOMIC_ACQUIRE);
        if (k == 0) {
            uintptr_t expected = 0;
            if (__atomic_compare_exchange_n(&s->site, &expected, site, 0, __ATOMIC_ACQ_REL,
                                            __ATOMIC_ACQUIRE)) {
                __atomic_store_n(&s->state, SITE_CLAIMED, __ATOMIC_RELAXED);
                __atomic_store_n(&s->what, what, __ATOMIC_RELEASE);
                *claimed = s;
                return 1;
            }
            k = expected; /* another thread took this slot: is it our site? */
        }
        if (k == site && slot_is(s, what)) {
            call_count(s);
            return 0;
        }
    }
    __atomic_fetch_add(&call_overflow, 1, __ATOMIC_RELAXED);
    return 0;
}

/* First call from a site, whose sequence has an empty slot at `i`. */
static void call_first(uintptr_t site, uint32_t what, unsigned i)
{
    struct call_slot *s = NULL;
    int pid, foreign = shim_foreign_process(&pid);
    unsigned flags = 0;
    if (foreign)
        flags = FLAG_NODEDUP; /* the table belongs to the process whose memory we share */
    else if (!call_claim(site, what, i, &s))
        return;
    char caller[CALLER_MAX + 1];
    uintptr_t base;
    size_t clen = shim_module_of((const void *)site, caller, sizeof caller, &base);
    if ((what >> 8) >= FN_FIRST_CRYPTO && clen && is_openssl(caller, clen)) {
        if (s)
            __atomic_store_n(&s->state, SITE_IGNORED, __ATOMIC_RELEASE);
        return;
    }
    uint8_t buf[CALL_REC_MAX];
    size_t len = build_call(buf, sizeof buf, what, site, pid, flags, caller, clen, base);
    report_first_caller(buf, len, foreign, -1, "", 0);
    if (s)
        __atomic_store_n(&s->state, SITE_READY, __ATOMIC_RELEASE);
}

void call_slow(uintptr_t site, uint32_t what)
{
    unsigned at = 0;
    int found = call_find(site, what, &at);
    if (found == FIND_FOUND)
        return;
    if (found == FIND_NONE) {
        __atomic_fetch_add(&call_overflow, 1, __ATOMIC_RELAXED); /* no slot: not reported */
        return;
    }
    if (!shim_enter())
        return;
    int saved = errno, cancel;
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel);
    dedup_tick();
    call_first(site, what, at);
    pthread_setcancelstate(cancel, NULL);
    errno = saved;
    shim_leave();
}

void call_tick(void)
{
    if (!shim_enter())
        return;
    int saved = errno;
    dedup_tick();
    errno = saved;
    shim_leave();
}

void calls_flush(void)
{
    int pid;
    if (shim_foreign_process(&pid))
        return;
    for (unsigned i = 0; i < CALL_SLOTS; i++) {
        struct call_slot *s = &call_slots[i];
        if (__atomic_load_n(&s->state, __ATOMIC_ACQUIRE) != SITE_READY ||
            __atomic_load_n(&s->pending, __ATOMIC_RELAXED) == 0)
            continue;
        uint32_t n = __atomic_exchange_n(&s->pending, 0, __ATOMIC_ACQ_REL);
        if (n == 0)
            continue;
        uintptr_t site = __atomic_load_n(&s->site, __ATOMIC_RELAXED);
        uint32_t what = __atomic_load_n(&s->what, __ATOMIC_RELAXED);
        char caller[CALLER_MAX + 1];
        uintptr_t base;
        size_t clen = shim_module_of((const void *)site, caller, sizeof caller, &base);
        uint8_t buf[CALL_REC_MAX];
        size_t len = build_call(buf, sizeof buf, what, site, pid, FLAG_REPEAT, caller, clen, base);
        rec_set_u32(buf, HDR_COUNT, n);
        shim_before_record();
        if (report_send(buf, len) != 0)
            __atomic_fetch_add(&s->pending, n, __ATOMIC_RELAXED); /* retry next flush */
    }
}

void calls_reset(void)
{
    shim_modules_reset();
    memset(call_slots, 0, sizeof call_slots);
    __atomic_store_n(&call_overflow, 0, __ATOMIC_RELAXED);
}

/* ---- the unsafe C library functions ------------------------------------------------------- */

/* Declared here: modern headers no longer declare gets, and getwd is marked deprecated. */
char *gets(char *s);

static char *(*real_gets)(char *);
static char *(*real_strcpy)(char *, const char *);
static char *(*real_strcat)(char *, const char *);
static char *(*real_stpcpy)(char *, const char *);
static int (*real_vsprintf)(char *, const char *, va_list);
static char *(*real_getwd)(char *);
static char *(*real_mktemp)(char *);
static char *(*real_tmpnam)(char *);
static char *(*real_tempnam)(const char *, const char *);

/* The real function in *slot, resolved on first use; NULL when it cannot be (the hook then
 * falls back to an equivalent or fails the call). */
#define CALL_REAL(name)                                                                      \
    (SHIM_LIKELY(__atomic_load_n(&real_##name, __ATOMIC_RELAXED) != NULL)                    \
         ? __atomic_load_n(&real_##name, __ATOMIC_RELAXED)                                   \
         : (__typeof__(real_##name))call_resolve((void **)&real_##name, #name))

/* Resolves every real function above at the shim's start, so that a program's first call never
 * runs dlsym (which would clear a dlerror() the program has not read yet). */
void calls_resolve(void)
{
    (void)CALL_REAL(gets);
    (void)CALL_REAL(strcpy);
    (void)CALL_REAL(strcat);
    (void)CALL_REAL(stpcpy);
    (void)CALL_REAL(vsprintf);
    (void)CALL_REAL(getwd);
    (void)CALL_REAL(mktemp);
    (void)CALL_REAL(tmpnam);
    (void)CALL_REAL(tempnam);
    crypto_resolve_loaded();
}

SHIM_EXPORT char *gets(char *s)
{
    call_seen(FN_GETS, 0, __builtin_return_address(0));
    char *(*f)(char *) = CALL_REAL(gets);
    if (SHIM_UNLIKELY(f == NULL)) {
        errno = ENOSYS;
        return NULL;
    }
    return f(s);
}

SHIM_EXPORT char *strcpy(char *restrict d, const char *restrict s)
{
    call_seen(FN_STRCPY, 0, __builtin_return_address(0));
    char *(*f)(char *, const char *) = CALL_REAL(strcpy);
    if (SHIM_UNLIKELY(f == NULL)) {
        memcpy(d, s, strlen(s) + 1);
        return d;
    }
    return f(d, s);
}

SHIM_EXPORT char *strcat(char *restrict d, const char *restrict s)
{
    call_seen(FN_STRCAT, 0, __builtin_return_address(0));
    char *(*f)(char *, const char *) = CALL_REAL(strcat);
    if (SHIM_UNLIKELY(f == NULL)) {
        memcpy(d + strlen(d), s, strlen(s) + 1);
        return d;
    }
    return f(d, s);
}

SHIM_EXPORT char *stpcpy(char *restrict d, const char *restrict s)
{
    call_seen(FN_STPCPY, 0, __builtin_return_address(0));
    char *(*f)(char *, const char *) = CALL_REAL(stpcpy);
    if (SHIM_UNLIKELY(f == NULL)) {
        size_t n = strlen(s);
        memcpy(d, s, n + 1);
        return d + n;
    }
    return f(d, s);
}

static int call_vsprintf(char *restrict d, const char *restrict format, va_list ap)
{
    int (*f)(char *, const char *, va_list) = CALL_REAL(vsprintf);
    if (SHIM_UNLIKELY(f == NULL))
        return vsnprintf(d, INT32_MAX, format, ap);
    return f(d, format, ap);
}

SHIM_EXPORT int sprintf(char *restrict d, const char *restrict format, ...)
{
    call_seen(FN_SPRINTF, 0, __builtin_return_address(0));
    va_list ap;
    va_start(ap, format);
    int ret = call_vsprintf(d, format, ap);
    va_end(ap);
    return ret;
}

SHIM_EXPORT int vsprintf(char *restrict d, const char *restrict format, va_list ap)
{
    call_seen(FN_VSPRINTF, 0, __builtin_return_address(0));
    return call_vsprintf(d, format, ap);
}

SHIM_EXPORT char *getwd(char *buf)
{
    call_seen(FN_GETWD, 0, __builtin_return_address(0));
    char *(*f)(char *) = CALL_REAL(getwd);
    if (SHIM_UNLIKELY(f == NULL)) {
        errno = ENOSYS;
        return NULL;
    }
    return f(buf);
}

SHIM_EXPORT char *mktemp(char *template)
{
    call_seen(FN_MKTEMP, 0, __builtin_return_address(0));
    char *(*f)(char *) = CALL_REAL(mktemp);
    if (SHIM_UNLIKELY(f == NULL)) {
        errno = ENOSYS;
        return NULL;
    }
    return f(template);
}

SHIM_EXPORT char *tmpnam(char s[L_tmpnam])
{
    call_seen(FN_TMPNAM, 0, __builtin_return_address(0));
    char *(*f)(char *) = CALL_REAL(tmpnam);
    if (SHIM_UNLIKELY(f == NULL))
        return NULL;
    return f(s);
}

SHIM_EXPORT char *tempnam(const char *dir, const char *prefix)
{
    call_seen(FN_TEMPNAM, 0, __builtin_return_address(0));
    char *(*f)(const char *, const char *) = CALL_REAL(tempnam);
    if (SHIM_UNLIKELY(f == NULL)) {
        errno = ENOSYS;
        return NULL;
    }
    return f(dir, prefix);
}
