/* Process lifecycle of the shim: initialisation from the environment, the PROC_START record,
 * the fork handler, and the final flush of repeat counts at normal exit.
 *
 * Environment:
 *   TELLTALE_SOCKET    path of the agent's unix SOCK_SEQPACKET socket ("@name": abstract
 *                      namespace). Unset or empty: the shim stays inert and hooks only call through.
 *   TELLTALE_WORKLOAD  opaque workload descriptor (at most 512 bytes are sent), copied verbatim
 *                      into PROC_START.
 *
 * Repeat counts since the last flush are lost when the process ends without running destructors
 * (_exit, a fatal signal, SIGKILL); exec flushes them first.
 */
#include "shim.h"
#include "calls.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

int shim_init_state;
int shim_active;
int shim_cached_pid;
__thread int shim_busy __attribute__((tls_model("initial-exec")));

static char workload[WORKLOAD_MAX];
static size_t workload_len;
static int workload_set;
static int workload_cut;
/* PROC_START of this process: owed (a fork child sends it lazily), attempted but not delivered
 * (re-sent first on the next new connection), or delivered. */
enum { START_OWED = 0, START_UNDELIVERED = 1, START_DELIVERED = 2 };
static int start_state = START_DELIVERED; /* atomic */
static unsigned start_flags;              /* 0, or FLAG_FORKED in a fork child */

int shim_resolve(void **slot, const char *name)
{
    int saved = errno;
    void *p = dlsym(RTLD_NEXT, name);
    errno = saved;
    if (p == NULL)
        return 0;
    __atomic_store_n(slot, p, __ATOMIC_RELAXED);
    return 1;
}

uint64_t shim_mono_ns(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC_COARSE, &ts) != 0)
        return 0;
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Reads /proc/self/cmdline straight into an ARGV field, cut to the room left. */
static void put_cmdline(struct rec *r)
{
    if (r->cap - r->len < 4) {
        rec_add_flags(r, FLAG_TRUNCATED);
        return;
    }
    int fd = open("/proc/self/cmdline", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    size_t room = rec_room(r);
    uint8_t *body = r->buf + r->len + 4;
    size_t n = 0;
    while (n < room) {
        ssize_t got = read(fd, body + n, room - n);
        if (got <= 0)
            break;
        n += (size_t)got;
    }
    char more;
    if (n == room && read(fd, &more, 1) == 1)
        rec_add_flags(r, FLAG_TRUNCATED);
    close(fd);
    rec_set_u16(r->buf, r->len, TAG_ARGV);
    rec_set_u16(r->buf, r->len + 2, (uint16_t)n);
    r->len += 4 + n;
}

size_t shim_build_start(uint8_t *buf, size_t cap, int pid, unsigned flags)
{
    char path[PATH_FIELD_MAX + 1];
    struct rec r;
    rec_begin(&r, buf, cap, KIND_PROC_START, pid);
    rec_add_flags(&r, flags);

    uid_t ru, eu, su;
    gid_t rg, eg, sg;
    if (getresuid(&ru, &eu, &su) == 0 && getresgid(&rg, &eg, &sg) == 0) {
        uint32_t creds[6] = {ru, eu, su, rg, eg, sg};
        rec_put(&r, TAG_CREDS, creds, sizeof creds);
    }
    if (workload_set) {
        rec_put_bytes(&r, TAG_WORKLOAD, workload, workload_len, WORKLOAD_MAX);
        if (workload_cut)
            rec_add_flags(&r, FLAG_TRUNCATED);
    }
    ssize_t n = readlink("/proc/self/exe", path, sizeof path);
    if (n >= 0)
        rec_put_bytes(&r, TAG_EXE, path, (size_t)n, PATH_FIELD_MAX);
    if (getcwd(path, sizeof path) != NULL)
        rec_put_bytes(&r, TAG_CWD, path, strlen(path), PATH_FIELD_MAX);
    else if (errno == ERANGE)
        rec_add_flags(&r, FLAG_TRUNCATED);
    procinfo_put_start(&r);
    put_cmdline(&r); /* last: it takes whatever room is left */
    return r.len;
}

/* The PROC_START is built here rather than on the stack: it is sent from within a hook, before
 * the hook's own record, whose buffer is already on a stack that may be a signal handler's small
 * one. Only the process that owns it sends from it (a process sharing our memory sends its start
 * detached), one sender at a time: another that finds it busy leaves the sending to the first. */
static uint8_t start_buf[REC_MAX];
static int start_buf_busy; /* atomic */

static void send_proc_start(void)
{
    if (__atomic_exchange_n(&start_buf_busy, 1, __ATOMIC_ACQUIRE))
        return;
    size_t len = shim_build_start(start_buf, sizeof start_buf,
                                  __atomic_load_n(&shim_cached_pid, __ATOMIC_RELAXED), start_flags);
    __atomic_store_n(&start_state, START_UNDELIVERED, __ATOMIC_RELAXED);
    if (report_send(start_buf, len) == 0)
        __atomic_store_n(&start_state, START_DELIVERED, __ATOMIC_RELAXED);
    __atomic_store_n(&start_buf_busy, 0, __ATOMIC_RELEASE);
}

void shim_before_record(void)
{
    int owed = START_OWED;
    if (SHIM_UNLIKELY(__atomic_load_n(&start_state, __ATOMIC_RELAXED) == START_OWED) &&
        __atomic_compare_exchange_n(&start_state, &owed, START_UNDELIVERED, 0, __ATOMIC_ACQ_REL,
                                    __ATOMIC_RELAXED))
        send_proc_start();
}

void shim_start_on_new_connection(void)
{
    if (__atomic_load_n(&start_state, __ATOMIC_RELAXED) == START_UNDELIVERED)
        send_proc_start();
}

/* Runs in the child after fork(): the child is a new process with its own dedup table,
 * connection, counters and (lazily) its own PROC_START. */
static void atfork_child(void)
{
    if (!shim_active)
        return;
    int saved = errno;
    __atomic_store_n(&shim_cached_pid, (int)getpid(), __ATOMIC_RELAXED);
    report_reset_child();
    dedup_reset();
    __atomic_store_n(&start_buf_busy, 0, __ATOMIC_RELAXED); /* a sender of the parent's is gone */
    start_flags = FLAG_FORKED;
    __atomic_store_n(&start_state, START_OWED, __ATOMIC_RELEASE);
    errno = saved;
}

static void configure(void)
{
    hooks_net_resolve();
    hooks_resolve_resolve();
    hooks_proc_resolve();
    hooks_priv_resolve();
    hooks_file_resolve();
    hooks_lib_resolve();
    hooks_mem_resolve();
    hooks_shell_resolve();
    calls_resolve();
    __atomic_store_n(&shim_cached_pid, (int)getpid(), __ATOMIC_RELAXED);
    const char *sock = getenv("TELLTALE_SOCKET");
    if (sock == NULL || *sock == '\0' || !report_configure(sock))
        return;
    const char *w = getenv("TELLTALE_WORKLOAD");
    if (w != NULL) {
        size_t n = strlen(w);
        if (n > WORKLOAD_MAX) {
            n = WORKLOAD_MAX;
            workload_cut = 1;
        }
        memcpy(workload, w, n);
        workload_len = n;
        workload_set = 1;
    }
    dedup_reset();
    if (pthread_atfork(NULL, NULL, atfork_child) != 0)
        return; /* a fork child would share our table and connection: stay inert */
    shim_active = 1;
}

int shim_init_lazy(void)
{
    int expected = INIT_NONE;
    if (!__atomic_compare_exchange_n(&shim_init_state, &expected, INIT_RUNNING, 0,
                                     __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        return expected == INIT_DONE; /* running elsewhere (or re-entered): call through */
    int saved = errno, cancel;
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel);
    shim_busy = 1;
    configure();
    if (shim_active)
        send_proc_start(); /* before any other record: it is seq 1 */
    __atomic_store_n(&shim_init_state, INIT_DONE, __ATOMIC_RELEASE);
    shim_busy = 0;
    pthread_setcancelstate(cancel, NULL);
    errno = saved;
    return 1;
}

__attribute__((constructor)) static void shim_constructor(void)
{
    if (!shim_busy)
        shim_init_lazy();
}

__attribute__((destructor)) static void shim_destructor(void)
{
    /* A guard held by a name lookup (one the program left with siglongjmp, or one a signal
     * handler called exit from) only hides the resolver's calls: the flush may go ahead. */
    const void *lookup = shim_lookup_frame;
    if (!shim_active || (shim_busy && lookup == NULL) ||
        __atomic_load_n(&shim_init_state, __ATOMIC_ACQUIRE) != INIT_DONE)
        return;
    int saved = errno, cancel, busy = shim_busy;
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel);
    shim_busy = 1;
    shim_lookup_frame = NULL;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    dedup_flush(); /* a process sharing our memory (vfork child) flushes nothing */
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    shim_lookup_frame = lookup;
    shim_busy = busy;
    pthread_setcancelstate(cancel, NULL);
    errno = saved;
}
