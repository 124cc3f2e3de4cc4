/* Propagation: children of the workload keep the shim even when the program hands exec or
 * posix_spawn an environment without telltale's variables (a "clean" environment, such as
 * Python's `subprocess.run(..., env={})`).
 *
 * The values to restore are copied once, when the shim loads, before the program can change or
 * overwrite its environment: the shim's own path (as the loader names it) for LD_PRELOAD, and the
 * TELLTALE_SOCKET and TELLTALE_WORKLOAD entries. At exec, a missing LD_PRELOAD, TELLTALE_SOCKET or
 * TELLTALE_WORKLOAD is appended, and an LD_PRELOAD that does not list the shim gets it put first,
 * its other entries kept; no other entry is changed, duplicated or moved. An environment whose
 * variables are all there is passed on untouched.
 *
 * The repaired copy lives on the caller's stack (exec may run in a vfork child, which must not
 * allocate, or in a signal handler on a small stack), within ENV_REPAIR_STACK_MAX bytes for the
 * array and a rewritten LD_PRELOAD together. Beyond that bound, when a value could not be kept at
 * load time, or when the shim itself cannot be passed on (the loader names it by a relative path,
 * or its file can no longer be read there at exec: removed, or another mount namespace or root),
 * the program's own envp is used (fail-open) and the exec is reported as a coverage gap.
 */
#include "coverage.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/syscall.h>

enum {
    ADD_PRELOAD = 1u << 0,
    ADD_SOCKET = 1u << 1,
    ADD_WORKLOAD = 1u << 2,
};

enum { SOCKET_VALUE_MAX = 256, WORKLOAD_VALUE_MAX = 2048, SELF_PATH_MAX = 1024 };

static const char PRELOAD_NAME[] = "LD_PRELOAD=";
static const char SOCKET_NAME[] = "TELLTALE_SOCKET=";
static const char WORKLOAD_NAME[] = "TELLTALE_WORKLOAD=";
#define NAME_LEN(n) (sizeof(n) - 1)

/* "NAME=value" entries ready to append, filled once by capture(). */
static char preload_entry[NAME_LEN(PRELOAD_NAME) + SELF_PATH_MAX + 1];
static char socket_entry[NAME_LEN(SOCKET_NAME) + SOCKET_VALUE_MAX + 1];
static char workload_entry[NAME_LEN(WORKLOAD_NAME) + WORKLOAD_VALUE_MAX + 1];
static size_t self_len;

enum { CAPTURE_NONE = 0, CAPTURE_RUNNING = 1, CAPTURE_DONE = 2 };
enum { VALUE_ABSENT = 0, VALUE_KEPT = 1, VALUE_LOST = 2 };
static int capture_state; /* CAPTURE_*; atomic */
static int self_state;    /* VALUE_*: the shim's path */
static int socket_state;
static int workload_state;

/* Copies "NAME=" getenv(NAME) into entry (cap bytes); returns a VALUE_* state. */
static int keep_entry(char *entry, size_t cap, const char *name, size_t name_len)
{
    char var[32];
    memcpy(var, name, name_len - 1);
    var[name_len - 1] = '\0';
    const char *value = getenv(var);
    if (value == NULL)
        return VALUE_ABSENT;
    size_t n = strlen(value);
    if (name_len + n + 1 > cap)
        return VALUE_LOST;
    memcpy(entry, name, name_len);
    memcpy(entry + name_len, value, n + 1);
    return VALUE_KEPT;
}

static void capture(void)
{
    int expected = CAPTURE_NONE;
    if (!__atomic_compare_exchange_n(&capture_state, &expected, CAPTURE_RUNNING, 0, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE))
        return;
    int saved = errno;
    Dl_info info;
    self_state = VALUE_LOST;
    if (dladdr((void *)&env_plan_make, &info) != 0 && info.dli_fname != NULL && info.dli_fname[0]) {
        size_t n = strlen(info.dli_fname);
        if (n <= SELF_PATH_MAX) {
            memcpy(preload_entry, PRELOAD_NAME, NAME_LEN(PRELOAD_NAME));
            memcpy(preload_entry + NAME_LEN(PRELOAD_NAME), info.dli_fname, n + 1);
            self_len = n;
            /* A relative name (LD_PRELOAD=./lib...) would name another file, or none, in a child
             * that runs elsewhere: it is never passed on, only recognised in an LD_PRELOAD the
             * program passes on itself. */
            self_state = info.dli_fname[0] == '/' ? VALUE_KEPT : VALUE_LOST;
        }
    }
    socket_state = keep_entry(socket_entry, sizeof socket_entry, SOCKET_NAME, NAME_LEN(SOCKET_NAME));
    workload_state =
        keep_entry(workload_entry, sizeof workload_entry, WORKLOAD_NAME, NAME_LEN(WORKLOAD_NAME));
    __atomic_store_n(&capture_state, CAPTURE_DONE, __ATOMIC_RELEASE);
    errno = saved;
}

/* Before main and before the program can touch its environment. */
__attribute__((constructor)) static void propagate_constructor(void)
{
    capture();
}

static int starts_with(const char *s, const char *prefix, size_t n)
{
    return strncmp(s, prefix, n) == 0;
}

/* 1 when the LD_PRELOAD value lists the shim (entries are separated by spaces or colons). */
static int lists_shim(const char *value)
{
    const char *self = preload_entry + NAME_LEN(PRELOAD_NAME);
    const char *s = value;
    while (*s) {
        while (*s == ' ' || *s == ':')
            s++;
        const char *start = s;
        while (*s && *s != ' ' && *s != ':')
            s++;
        if ((size_t)(s - start) == self_len && self_len && memcmp(start, self, self_len) == 0)
            return 1;
    }
    return 0;
}

/* 1 when the shim's file can still be read under the path it would be passed on as. A shim
 * deleted or replaced since, or a mount namespace or root changed since (unshare, chroot), can
 * make it unreachable; the loader would then refuse the preload and the child would run
 * unobserved without a word. Not a guarantee: the child may still change namespace or root at
 * exec. A raw system call, allowed in a vfork child or a signal handler. */
static int self_readable(void)
{
    /* The loader opens the preload with the effective ids: faccessat2 with AT_EACCESS checks
     * those (plain faccessat checks the real ones); kernels before 5.8 lack it. */
    const char *self = preload_entry + NAME_LEN(PRELOAD_NAME);
    long r = syscall(SYS_faccessat2, AT_FDCWD, self, R_OK, AT_EACCESS);
    if (r != 0 && errno == ENOSYS)
        r = syscall(SYS_faccessat, AT_FDCWD, self, R_OK);
    return r == 0;
}

void env_plan_make(struct env_plan *p, char *const envp[])
{
    p->slots = 1;
    p->text = 1;
    p->entries = 0;
    p->preload_at = -1;
    p->add = 0;
    p->stripped = 0;
    int saved = errno;
    if (!shim_enter()) {
        errno = saved;
        return;
    }
    if (__atomic_load_n(&capture_state, __ATOMIC_ACQUIRE) == CAPTURE_NONE)
        capture();
    int captured = __atomic_load_n(&capture_state, __ATOMIC_ACQUIRE) == CAPTURE_DONE;

    size_t n = 0;
    long preload = -1;
    const char *preload_value = NULL;
    int has_socket = 0, has_workload = 0;
    for (const char *e; envp != NULL && (e = envp[n]) != NULL; n++) { /* each pointer read once */
        if (e[0] == 'L' && starts_with(e, PRELOAD_NAME, NAME_LEN(PRELOAD_NAME))) {
            preload = (long)n; /* the loader uses the last one */
            preload_value = e + NAME_LEN(PRELOAD_NAME);
        }
        else if (e[0] == 'T' && starts_with(e, SOCKET_NAME, NAME_LEN(SOCKET_NAME)))
            has_socket = 1;
        else if (e[0] == 'T' && starts_with(e, WORKLOAD_NAME, NAME_LEN(WORKLOAD_NAME)))
            has_workload = 1;
    }

    unsigned add = 0;
    size_t text = 0;
    int lost = 0;
    if (preload < 0) {
        add |= ADD_PRELOAD;
    } else if (!captured || !lists_shim(preload_value)) {
        text = NAME_LEN(PRELOAD_NAME) + self_len + 1 + strlen(preload_value) + 1;
    }
    if ((add & ADD_PRELOAD) || text)
        lost |= !captured || self_state != VALUE_KEPT || !self_readable();
    if (!has_socket) {
        add |= ADD_SOCKET;
        lost |= !captured || socket_state != VALUE_KEPT;
    }
    if (!has_workload && captured && workload_state != VALUE_ABSENT) {
        add |= ADD_WORKLOAD;
        lost |= workload_state != VALUE_KEPT;
    }
    if (add == 0 && text == 0)
        goto out;
    size_t slots = n + (size_t)__builtin_popcount(add) + 1;
    size_t slot_bytes = slots * sizeof(char *);
    if (lost || n > ENV_REPAIR_STACK_MAX / sizeof(char *) || slot_bytes >= ENV_REPAIR_STACK_MAX ||
        text > ENV_REPAIR_STACK_MAX - slot_bytes) {
        p->stripped = 1;
        goto out;
    }
    p->entries = n;
    p->add = add;
    p->slots = slots;
    if (text) {
        p->preload_at = preload;
        p->text = text;
    }
out:
    shim_leave();
    errno = saved;
}

char *const *env_plan_apply(const struct env_plan *p, char *const envp[], char **slots, char *text)
{
    if (p->add == 0 && p->preload_at < 0)
        return envp;
    size_t j = 0;
    for (size_t i = 0; i < p->entries && envp[i] != NULL; i++)
        slots[j++] = envp[i];
    /* Each entry's pointer is read once, into slots: an entry the plan saw as LD_PRELOAD is only
     * rewritten if the copy still has it there (the array may be changed in place meanwhile by
     * another thread's setenv or unsetenv, as glibc's own exec would also see). */
    if (p->preload_at >= 0 && (size_t)p->preload_at < j &&
        starts_with(slots[p->preload_at], PRELOAD_NAME, NAME_LEN(PRELOAD_NAME))) {
        /* "LD_PRELOAD=<shim> <former entries>", cut to the room planned. */
        const char *former = slots[p->preload_at] + NAME_LEN(PRELOAD_NAME);
        size_t at = NAME_LEN(PRELOAD_NAME) + self_len;
        memcpy(text, preload_entry, at);
        if (*former && at + 1 < p->text) {
            text[at++] = ' ';
            size_t n = strnlen(former, p->text - at - 1);
            memcpy(text + at, former, n);
            at += n;
        }
        text[at] = '\0';
        slots[p->preload_at] = text;
    }
    if (p->add & ADD_PRELOAD)
        slots[j++] = preload_entry;
    if (p->add & ADD_SOCKET)
        slots[j++] = socket_entry;
    if (p->add & ADD_WORKLOAD)
        slots[j++] = workload_entry;
    slots[j] = NULL;
    return slots;
}
