/* Name resolution hooks: getaddrinfo, gethostbyname, gethostbyname2, gethostbyname_r,
 * gethostbyname2_r.
 *
 * Each sends one RESOLVE record after the call: RESULT, NAME (the name asked for) and, when the
 * lookup succeeded, ADDRESSES: the distinct textual addresses of the result in result order, each
 * followed by a NUL. Identity: the name, whichever function looked it up.
 *
 *   getaddrinfo       RESULT is the EAI_* code, with errno only for EAI_SYSTEM; no FUNCTION.
 *                     A call without a node name (a passive lookup of a service) is not reported.
 *   gethostbyname*    FUNCTION names the call. RESULT is 0 when the name was found, else the
 *                     h_errno code (HOST_NOT_FOUND, TRY_AGAIN, NO_RECOVERY, NO_DATA, or
 *                     NETDB_INTERNAL, which alone carries an errno: for the _r variants the error
 *                     number they returned). An _r call that failed with ERANGE (the program's
 *                     buffer was too small; it retries with a larger one) is not reported.
 *
 * The shim counts as busy during the real call, so the sockets the resolver (or a name service
 * module) opens, connects and sends on are not reported as the program's. errno and h_errno are
 * what the real call left.
 *
 * A program may leave the real call without returning: a signal handler that siglongjmps out of a
 * slow lookup (alarm-based resolver timeouts, libcurl's synchronous resolver). The thread would then
 * stay busy, its hooked calls unreported, for good. So a lookup records, while it holds the guard
 * across the real call, its hook's frame address (shim_lookup_frame) and the thread's alternate
 * signal stack (one sigaltstack call per lookup, before the real call). Any hook that finds the
 * guard held calls shim_reclaim (only then: the fast path tests shim_busy alone), which takes the
 * guard back when its own frame is at or above the lookup hook's frame and not on that signal
 * stack: the lookup's frame is gone. It makes no system call and reads no memory but the thread's
 * own variables, so a hooked call made within a lookup (a name service module's socket, connect,
 * close; a signal handler's) costs two compares, and a seccomp filter sees nothing of it.
 *
 * A call made within the lookup (the resolver's, a signal handler's on the same stack) runs below
 * the frame: the guard stays. So, after a siglongjmp, a call made from a frame deeper than the
 * abandoned lookup's stays unreported (the resolver's, as far as the shim can tell) until a call
 * from a shallower frame takes the guard back. After its real call returns, a lookup holds the
 * guard again whatever happened meanwhile.
 */
#include "shim.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>

SHIM_REAL(getaddrinfo);
SHIM_REAL(gethostbyname);
SHIM_REAL(gethostbyname2);
SHIM_REAL(gethostbyname_r);
SHIM_REAL(gethostbyname2_r);

void hooks_resolve_resolve(void)
{
    (void)SHIM_RESOLVE(getaddrinfo);
    (void)SHIM_RESOLVE(gethostbyname);
    (void)SHIM_RESOLVE(gethostbyname2);
    (void)SHIM_RESOLVE(gethostbyname_r);
    (void)SHIM_RESOLVE(gethostbyname2_r);
}

enum { FUNCTION_MAX_FIELD = 16 };

/* The ADDRESSES field being built: whole NUL-terminated addresses, no duplicates. */
struct addr_list {
    char text[ADDRESSES_MAX];
    size_t used;
    int cut; /* an address was left out for lack of room */
};

static void addr_list_add(struct addr_list *l, int family, const void *src)
{
    char text[INET6_ADDRSTRLEN];
    if (l->cut || inet_ntop(family, src, text, sizeof text) == NULL)
        return;
    for (size_t off = 0; off < l->used; off += strlen(l->text + off) + 1)
        if (strcmp(l->text + off, text) == 0)
            return;
    size_t tlen = strlen(text) + 1;
    if (l->used + tlen > sizeof l->text) {
        l->cut = 1;
        return;
    }
    memcpy(l->text + l->used, text, tlen);
    l->used += tlen;
}

static void addr_list_from_addrinfo(struct addr_list *l, const struct addrinfo *res)
{
    for (const struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        if (ai->ai_addr == NULL)
            continue;
        if (ai->ai_family == AF_INET)
            addr_list_add(l, AF_INET, &((const struct sockaddr_in *)ai->ai_addr)->sin_addr);
        else if (ai->ai_family == AF_INET6)
            addr_list_add(l, AF_INET6, &((const struct sockaddr_in6 *)ai->ai_addr)->sin6_addr);
    }
}

static void addr_list_from_hostent(struct addr_list *l, const struct hostent *he)
{
    int want = he->h_addrtype == AF_INET ? 4 : he->h_addrtype == AF_INET6 ? 16 : -1;
    if (he->h_length != want || he->h_addr_list == NULL)
        return;
    for (char **a = he->h_addr_list; *a != NULL; a++)
        addr_list_add(l, he->h_addrtype, *a);
}

/* One finished lookup. */
struct lookup {
    const char *function; /* NULL: getaddrinfo (no FUNCTION field) */
    const char *name;
    size_t name_len; /* up to NAME_MAX_FIELD + 1: a cut is flagged */
    int32_t result[2];
    int found;                  /* the lookup succeeded: ADDRESSES is sent */
    const struct addrinfo *res; /* getaddrinfo's result, when it succeeded */
    const struct hostent *he;   /* gethostbyname*'s result, when it succeeded */
};

static uint64_t lookup_key(const char *name, size_t name_len)
{
    return hash_final(hash_mem((uint64_t)KIND_RESOLVE << 32, name, name_len));
}

/* First occurrence (or dedup unavailable): builds and sends the record. */
static __attribute__((noinline)) void lookup_first(const struct lookup *k, uint64_t key)
{
    int cancel, pid, slot = -1;
    unsigned flags = 0;
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel);
    int foreign = shim_foreign_process(&pid);
    int claim = foreign ? DEDUP_FULL : dedup_claim(key, &slot);
    if (claim != DEDUP_HIT) {
        if (claim == DEDUP_FULL)
            flags |= FLAG_NODEDUP;
        uint8_t buf[REC_HEADER_SIZE + 4 * 4 + 8 + FUNCTION_MAX_FIELD + NAME_MAX_FIELD +
                    ADDRESSES_MAX + CALLER_FIELD];
        struct addr_list addrs = {.used = 0, .cut = 0};
        if (k->res != NULL)
            addr_list_from_addrinfo(&addrs, k->res);
        else if (k->he != NULL)
            addr_list_from_hostent(&addrs, k->he);
        struct rec r;
        rec_begin(&r, buf, sizeof buf, KIND_RESOLVE, pid);
        rec_add_flags(&r, flags | (addrs.cut ? FLAG_TRUNCATED : 0));
        rec_put(&r, TAG_RESULT, k->result, sizeof k->result);
        if (k->function != NULL)
            rec_put_bytes(&r, TAG_FUNCTION, k->function, strlen(k->function), FUNCTION_MAX_FIELD);
        rec_put_bytes(&r, TAG_NAME, k->name, k->name_len, NAME_MAX_FIELD);
        if (k->found)
            rec_put_bytes(&r, TAG_ADDRESSES, addrs.text, addrs.used, ADDRESSES_MAX);
        report_first(buf, r.len, foreign, slot);
    }
    pthread_setcancelstate(cancel, NULL);
}

/* Called with the guard held, after the real call. */
static void lookup_report(struct lookup *k)
{
    k->name_len = strnlen(k->name, NAME_MAX_FIELD + 1);
    uint64_t key = lookup_key(k->name, k->name_len);
    dedup_tick();
    if (!dedup_hit(key))
        lookup_first(k, key);
}

__thread const void *shim_lookup_frame __attribute__((tls_model("initial-exec")));
/* The alternate signal stack of the thread when its lookup began ([lo, hi); empty when none or
 * unknown), and whether the lookup itself runs on it. */
static __thread uintptr_t lookup_alt_lo __attribute__((tls_model("initial-exec")));
static __thread uintptr_t lookup_alt_hi __attribute__((tls_model("initial-exec")));
static __thread int lookup_on_alt __attribute__((tls_model("initial-exec")));

/* Out of line and cold: the hot path of every hook only tests shim_busy. No system call, no
 * memory read but this thread's variables. */
__attribute__((noinline, cold)) int shim_reclaim(const void *frame)
{
    const void *held = shim_lookup_frame;
    if (held == NULL)
        return 0; /* the guard is the shim's own work */
    uintptr_t f = (uintptr_t)frame;
    int on_alt = f - lookup_alt_lo < lookup_alt_hi - lookup_alt_lo;
    int over;
    if (lookup_on_alt)
        /* While a lookup made on the signal stack runs, the thread stays on it (the kernel keeps
         * nested handlers there): a call elsewhere means it was left. */
        over = !on_alt || f >= (uintptr_t)held;
    else
        /* A signal handler on the signal stack says nothing about the lookup's frame. */
        over = !on_alt && f >= (uintptr_t)held;
    if (!over)
        return 0;
    shim_lookup_frame = NULL;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    shim_leave();
    return 1;
}

/* Enters the shim for a lookup of `name` before the real call, leaving errno as it was (a
 * success leaves errno alone: the shim's own setup must not show). Called by the hook, whose frame
 * is `frame`; on 1, the real call follows with shim_lookup_frame set, and lookup_done comes after
 * it. */
static inline __attribute__((always_inline)) int lookup_enter(const char *name, const void *frame)
{
    int saved = errno;
    if (SHIM_UNLIKELY(shim_busy))
        (void)shim_reclaim(frame);
    int entered = name != NULL && shim_enter();
    if (entered) {
        stack_t ss;
        if (sigaltstack(NULL, &ss) == 0 && !(ss.ss_flags & SS_DISABLE)) {
            lookup_alt_lo = (uintptr_t)ss.ss_sp;
            lookup_alt_hi = (uintptr_t)ss.ss_sp + ss.ss_size;
            lookup_on_alt = (ss.ss_flags & SS_ONSTACK) != 0;
        } else {
            lookup_alt_lo = lookup_alt_hi = 0; /* none, or refused: frames alone decide */
            lookup_on_alt = 0;
        }
        __atomic_signal_fence(__ATOMIC_SEQ_CST);
        shim_lookup_frame = frame;
        __atomic_signal_fence(__ATOMIC_SEQ_CST);
    }
    errno = saved;
    return entered;
}

/* After the real call of an entered lookup: the guard now covers the shim's own work only (and
 * holds again if a call within the lookup took it for a left one). */
static inline void lookup_done(void)
{
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    shim_lookup_frame = NULL;
    shim_busy = 1;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
}

SHIM_EXPORT int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                            struct addrinfo **res)
{
    SHIM_REAL_OR_FAIL(getaddrinfo, EAI_SYSTEM);
    int entered = lookup_enter(node, __builtin_frame_address(0));
    int ret = real_getaddrinfo(node, service, hints, res);
    int err = errno;
    if (entered) {
        lookup_done();
        struct lookup k = {.name = node,
                           .result = {ret, ret == EAI_SYSTEM ? err : 0},
                           .found = ret == 0,
                           .res = ret == 0 && res != NULL ? *res : NULL};
        lookup_report(&k);
        shim_leave();
    }
    errno = err;
    return ret;
}

/* gethostbyname, gethostbyname2: `he` and h_errno are what the real call left. */
static void hostent_event(const char *function, const char *name, const struct hostent *he,
                          int herr, int err)
{
    struct lookup k = {.function = function,
                       .name = name,
                       .result = {he != NULL ? 0 : herr,
                                  he == NULL && herr == NETDB_INTERNAL ? err : 0},
                       .found = he != NULL,
                       .he = he};
    lookup_report(&k);
}

/* gethostbyname_r, gethostbyname2_r: `ret` is the error number returned, `he` the result
 * pointer's value, `herr` what the call stored through h_errnop. */
static void hostent_r_event(const char *function, const char *name, int ret,
                            const struct hostent *he, int herr, int err)
{
    int found = ret == 0 && he != NULL;
    struct lookup k = {.function = function,
                       .name = name,
                       .result = {found ? 0 : herr,
                                  !found && herr == NETDB_INTERNAL ? (ret != 0 ? ret : err) : 0},
                       .found = found,
                       .he = found ? he : NULL};
    lookup_report(&k);
}

SHIM_EXPORT struct hostent *gethostbyname(const char *name)
{
    SHIM_REAL_OR_FAIL(gethostbyname, NULL);
    int entered = lookup_enter(name, __builtin_frame_address(0));
    struct hostent *he = real_gethostbyname(name);
    int err = errno, herr = h_errno;
    if (entered) {
        lookup_done();
        hostent_event("gethostbyname", name, he, herr, err);
        shim_leave();
        h_errno = herr;
    }
    errno = err;
    return he;
}

SHIM_EXPORT struct hostent *gethostbyname2(const char *name, int af)
{
    SHIM_REAL_OR_FAIL(gethostbyname2, NULL);
    int entered = lookup_enter(name, __builtin_frame_address(0));
    struct hostent *he = real_gethostbyname2(name, af);
    int err = errno, herr = h_errno;
    if (entered) {
        lookup_done();
        hostent_event("gethostbyname2", name, he, herr, err);
        shim_leave();
        h_errno = herr;
    }
    errno = err;
    return he;
}

/* The value the program finds in *p after the call; p may be NULL (glibc would have faulted). */
static const struct hostent *result_of(struct hostent **p)
{
    return p != NULL ? *p : NULL;
}

SHIM_EXPORT int gethostbyname_r(const char *name, struct hostent *ret_buf, char *buf,
                                size_t buflen, struct hostent **result, int *h_errnop)
{
    SHIM_REAL_OR_FAIL(gethostbyname_r, ENOSYS);
    int entered = lookup_enter(name, __builtin_frame_address(0));
    int ret = real_gethostbyname_r(name, ret_buf, buf, buflen, result, h_errnop);
    int err = errno, herr = h_errno;
    if (entered) {
        lookup_done();
        if (ret != ERANGE)
            hostent_r_event("gethostbyname_r", name, ret, result_of(result),
                            h_errnop != NULL ? *h_errnop : herr, err);
        shim_leave();
        h_errno = herr;
    }
    errno = err;
    return ret;
}

SHIM_EXPORT int gethostbyname2_r(const char *name, int af, struct hostent *ret_buf, char *buf,
                                 size_t buflen, struct hostent **result, int *h_errnop)
{
    SHIM_REAL_OR_FAIL(gethostbyname2_r, ENOSYS);
    int entered = lookup_enter(name, __builtin_frame_address(0));
    int ret = real_gethostbyname2_r(name, af, ret_buf, buf, buflen, result, h_errnop);
    int err = errno, herr = h_errno;
    if (entered) {
        lookup_done();
        if (ret != ERANGE)
            hostent_r_event("gethostbyname2_r", name, ret, result_of(result),
                            h_errnop != NULL ? *h_errnop : herr, err);
        shim_leave();
        h_errno = herr;
    }
    errno = err;
    return ret;
}
