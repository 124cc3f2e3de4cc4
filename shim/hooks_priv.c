/* Privilege and process-tampering hooks: the setuid and setgid families, setgroups, ptrace,
 * security-relevant prctl options and memfd_create.
 *
 * Each calls the real function first, then reports with the call's RESULT:
 *   CREDENTIALS  FUNCTION (the call's name), IDS (the requested ids, -1 = unchanged; not for
 *                setgroups), GROUPS (setgroups that succeeded, at most 64 entries).
 *                Identity: function, ids and groups.
 *   PTRACE       REQUEST, TARGET_PID. Identity: request and pid. The RESULT value is 0 on success:
 *                a PEEK request returns the tracee's memory, which is not sent.
 *   PRCTL        OPTION, ARGUMENT (the first argument), only for PR_SET_DUMPABLE,
 *                PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP, PR_SET_SECCOMP, PR_SET_PTRACER,
 *                PR_SET_SECUREBITS and PR_CAP_AMBIENT. Identity: option and argument.
 *   MEMFD        MEMFD_NAME, MEMFD_FLAGS. Identity: name and flags.
 *
 * These calls are rare, so each report first checks whether the caller shares our memory without
 * having been through the fork handler (a vfork child changing its ids before exec): such a
 * caller sends directly, undeduplicated, and leaves the table alone.
 */
#include "shim.h"

#include <grp.h>
#include <pthread.h>
#include <stdarg.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>

SHIM_REAL(setuid);
SHIM_REAL(seteuid);
SHIM_REAL(setreuid);
SHIM_REAL(setresuid);
SHIM_REAL(setgid);
SHIM_REAL(setegid);
SHIM_REAL(setregid);
SHIM_REAL(setresgid);
SHIM_REAL(setgroups);
SHIM_REAL(ptrace);
SHIM_REAL(prctl);
SHIM_REAL(memfd_create);

void hooks_priv_resolve(void)
{
    (void)SHIM_RESOLVE(setuid);
    (void)SHIM_RESOLVE(seteuid);
    (void)SHIM_RESOLVE(setreuid);
    (void)SHIM_RESOLVE(setresuid);
    (void)SHIM_RESOLVE(setgid);
    (void)SHIM_RESOLVE(setegid);
    (void)SHIM_RESOLVE(setregid);
    (void)SHIM_RESOLVE(setresgid);
    (void)SHIM_RESOLVE(setgroups);
    (void)SHIM_RESOLVE(ptrace);
    (void)SHIM_RESOLVE(prctl);
    (void)SHIM_RESOLVE(memfd_create);
}

/* One observed call. Fields of other kinds are left at 0/NULL. */
struct priv_call {
    unsigned kind;
    int32_t ret, err;
    /* CREDENTIALS */
    const char *function;
    size_t nids;
    int64_t ids[3];
    const gid_t *groups; /* NULL: no GROUPS field */
    size_t ngroups;
    /* PTRACE */
    int32_t request;
    uint32_t target;
    /* PRCTL */
    int32_t option;
    uint64_t argument;
    /* MEMFD */
    const char *name; /* NULL: no MEMFD_NAME field */
    size_t name_len;
    uint32_t mflags;
};

static uint64_t priv_key(const struct priv_call *c, uint32_t *groups, size_t ngroups)
{
    uint64_t h = (uint64_t)c->kind << 32;
    switch (c->kind) {
    case KIND_CREDENTIALS:
        h = hash_mem(h, c->function, strlen(c->function));
        h = hash_mem(h, c->ids, c->nids * sizeof c->ids[0]);
        h = hash_mem(h, groups, ngroups * sizeof groups[0]);
        break;
    case KIND_PTRACE:
        h = hash_mem(h, &c->request, sizeof c->request);
        h = hash_mem(h, &c->target, sizeof c->target);
        break;
    case KIND_PRCTL:
        h = hash_mem(h, &c->option, sizeof c->option);
        h = hash_mem(h, &c->argument, sizeof c->argument);
        break;
    default: /* KIND_MEMFD */
        h = hash_mem(h, c->name ? c->name : "", c->name ? c->name_len : 0);
        h = hash_mem(h, &c->mflags, sizeof c->mflags);
        break;
    }
    return hash_final(h);
}

static __attribute__((noinline)) void priv_report(const struct priv_call *c)
{
    int cancel, pid, foreign, slot = -1;
    unsigned flags = 0;
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel);

    uint32_t groups[GROUPS_MAX_FIELD];
    size_t ngroups = 0;
    if (c->groups != NULL) {
        ngroups = c->ngroups < GROUPS_MAX_FIELD ? c->ngroups : GROUPS_MAX_FIELD;
        for (size_t i = 0; i < ngroups; i++)
            groups[i] = (uint32_t)c->groups[i];
        if (c->ngroups > GROUPS_MAX_FIELD)
            flags |= FLAG_TRUNCATED;
    }

    if (!dedup_first(priv_key(c, groups, ngroups), 1, &pid, &foreign, &slot, &flags))
        goto out;

    uint8_t buf[REC_HEADER_SIZE + 12 + 4 + 16 + 4 + 24 + 4 + 4 * GROUPS_MAX_FIELD + 4 +
                MEMFD_NAME_MAX + 32 + CALLER_FIELD];
    struct rec r;
    rec_begin(&r, buf, sizeof buf, c->kind, pid);
    rec_add_flags(&r, flags);
    int32_t result[2] = {c->ret, c->ret < 0 ? c->err : 0};
    rec_put(&r, TAG_RESULT, result, sizeof result);
    switch (c->kind) {
    case KIND_CREDENTIALS:
        rec_put_bytes(&r, TAG_FUNCTION, c->function, strlen(c->function), 16);
        if (c->nids)
            rec_put(&r, TAG_IDS, c->ids, c->nids * sizeof c->ids[0]);
        if (c->groups != NULL)
            rec_put(&r, TAG_GROUPS, groups, ngroups * sizeof groups[0]);
        break;
    case KIND_PTRACE:
        rec_put_i32(&r, TAG_REQUEST, c->request);
        rec_put_u32(&r, TAG_TARGET_PID, c->target);
        break;
    case KIND_PRCTL:
        rec_put_i32(&r, TAG_OPTION, c->option);
        rec_put(&r, TAG_ARGUMENT, &c->argument, sizeof c->argument);
        break;
    default: /* KIND_MEMFD */
        if (c->name != NULL)
            rec_put_bytes(&r, TAG_MEMFD_NAME, c->name, c->name_len, MEMFD_NAME_MAX);
        rec_put_u32(&r, TAG_MEMFD_FLAGS, c->mflags);
        break;
    }

    report_first(buf, r.len, foreign, slot);
out:
    pthread_setcancelstate(cancel, NULL);
}

/* ---- setuid family, setgroups ---------------------------------------------------------------- */

static int64_t id_value(unsigned id)
{
    return id == (unsigned)-1 ? -1 : (int64_t)id;
}

static void creds_event(const char *function, size_t nids, unsigned a, unsigned b, unsigned c,
                        int ret, int err)
{
    if (shim_enter()) {
        struct priv_call call = {.kind = KIND_CREDENTIALS, .ret = ret, .err = err,
                                 .function = function, .nids = nids,
                                 .ids = {id_value(a), id_value(b), id_value(c)}};
        priv_report(&call);
        shim_leave();
    }
}

/* Defines a hook for a function taking one, two or three ids. */
#define CREDS_HOOK1(name, type)                                                              \
    SHIM_EXPORT int name(type a)                                                             \
    {                                                                                        \
        SHIM_REAL_OR_FAIL(name, -1);                                                         \
        int ret = real_##name(a);                                                            \
        int err = errno;                                                                     \
        creds_event(#name, 1, a, 0, 0, ret, err);                                            \
        errno = err;                                                                         \
        return ret;                                                                          \
    }
#define CREDS_HOOK2(name, type)                                                              \
    SHIM_EXPORT int name(type a, type b)                                                     \
    {                                                                                        \
        SHIM_REAL_OR_FAIL(name, -1);                                                         \
        int ret = real_##name(a, b);                                                         \
        int err = errno;                                                                     \
        creds_event(#name, 2, a, b, 0, ret, err);                                            \
        errno = err;                                                                         \
        return ret;                                                                          \
    }
#define CREDS_HOOK3(name, type)                                                              \
    SHIM_EXPORT int name(type a, type b, type c)                                             \
    {                                                                                        \
        SHIM_REAL_OR_FAIL(name, -1);                                                         \
        int ret = real_##name(a, b, c);                                                      \
        int err = errno;                                                                     \
        creds_event(#name, 3, a, b, c, ret, err);                                            \
        errno = err;                                                                         \
        return ret;                                                                          \
    }

CREDS_HOOK1(setuid, uid_t)
CREDS_HOOK1(seteuid, uid_t)
CREDS_HOOK2(setreuid, uid_t)
CREDS_HOOK3(setresuid, uid_t)
CREDS_HOOK1(setgid, gid_t)
CREDS_HOOK1(setegid, gid_t)
CREDS_HOOK2(setregid, gid_t)
CREDS_HOOK3(setresgid, gid_t)

/* The list is read only after a successful call: the kernel read it then, so it is readable. */
SHIM_EXPORT int setgroups(size_t size, const gid_t *list)
{
    SHIM_REAL_OR_FAIL(setgroups, -1);
    int ret = real_setgroups(size, list);
    int err = errno;
    if (shim_enter()) {
        static const gid_t none[1];
        struct priv_call call = {.kind = KIND_CREDENTIALS, .ret = ret, .err = err,
                                 .function = "setgroups",
                                 .groups = ret == 0 ? (size && list ? list : none) : NULL,
                                 .ngroups = ret == 0 && list ? size : 0};
        priv_report(&call);
        shim_leave();
    }
    errno = err;
    return ret;
}

/* ---- ptrace ----------------------------------------------------------------------------------- */

SHIM_EXPORT long ptrace(enum __ptrace_request request, ...)
{
    va_list ap;
    va_start(ap, request);
    pid_t pid = va_arg(ap, pid_t);
    void *addr = va_arg(ap, void *);
    void *data = va_arg(ap, void *);
    va_end(ap);
    SHIM_REAL_OR_FAIL(ptrace, -1);
    long ret = real_ptrace(request, pid, addr, data);
    int err = errno;
    if (shim_enter()) {
        int failed = ret == -1 && err != 0; /* a PEEK request may return -1 as data */
        struct priv_call call = {.kind = KIND_PTRACE, .ret = failed ? -1 : 0, .err = err,
                                 .request = (int32_t)request, .target = (uint32_t)pid};
        priv_report(&call);
        shim_leave();
    }
    errno = err;
    return ret;
}

/* ---- prctl ------------------------------------------------------------------------------------ */

static int prctl_reported(int option)
{
    switch (option) {
    case PR_SET_DUMPABLE:
    case PR_SET_NO_NEW_PRIVS:
    case PR_CAPBSET_DROP:
    case PR_SET_SECCOMP:
    case PR_SET_PTRACER:
    case PR_SET_SECUREBITS:
    case PR_CAP_AMBIENT:
        return 1;
    default:
        return 0;
    }
}

SHIM_EXPORT int prctl(int option, ...)
{
    va_list ap;
    va_start(ap, option);
    unsigned long a2 = va_arg(ap, unsigned long);
    unsigned long a3 = va_arg(ap, unsigned long);
    unsigned long a4 = va_arg(ap, unsigned long);
    unsigned long a5 = va_arg(ap, unsigned long);
    va_end(ap);
    SHIM_REAL_OR_FAIL(prctl, -1);
    int ret = real_prctl(option, a2, a3, a4, a5);
    int err = errno;
    if (prctl_reported(option) && shim_enter()) {
        struct priv_call call = {.kind = KIND_PRCTL, .ret = ret, .err = err, .option = option,
                                 .argument = a2};
        priv_report(&call);
        shim_leave();
    }
    errno = err;
    return ret;
}

/* ---- memfd_create ----------------------------------------------------------------------------- */

SHIM_EXPORT int memfd_create(const char *name, unsigned int flags)
{
    SHIM_REAL_OR_FAIL(memfd_create, -1);
    int ret = real_memfd_create(name, flags);
    int err = errno;
    if (shim_enter()) {
        /* The name is read unless the kernel could not read it (EFAULT). */
        int readable = name != NULL && !(ret < 0 && err == EFAULT);
        struct priv_call call = {.kind = KIND_MEMFD, .ret = ret, .err = err,
                                 .name = readable ? name : NULL,
                                 .name_len = readable ? strnlen(name, MEMFD_NAME_MAX + 1) : 0,
                                 .mflags = flags};
        priv_report(&call);
        shim_leave();
    }
    errno = err;
    return ret;
}
