/* Transport: one SOCK_SEQPACKET connection per process to the agent, one record per message.
 *
 * - Connected lazily at the first record, non-blocking and close-on-exec, and moved to a high
 *   descriptor number (≥ 900) so it does not take a number the program expects to get.
 * - Before each send the descriptor is checked with fstat against the socket we opened (device and
 *   inode): if the program closed or reused that number, whatever it put there is left
 *   untouched, and we reconnect on a new number instead.
 * - Sends never block (MSG_DONTWAIT) nor raise SIGPIPE (MSG_NOSIGNAL). A record that cannot be
 *   delivered is dropped and counted; the count travels in the header of later records.
 * - Connection attempts happen at most once a second, except one immediate attempt after a
 *   working connection was lost. The first record on a new connection is the process's PROC_START
 *   if that was never delivered.
 * - The descriptor number we own is never freed while the process runs: a dead connection is
 *   replaced in place with dup3, so a concurrent sender can never hit a number the program has
 *   just been given.
 */
#include "shim.h"

#include <fcntl.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/un.h>

SHIM_REAL(connect);

enum { FD_FLOOR = 900 };

/* The connection word: inode (low 32 bits) << 32 | DEAD bit | (fd + 1); 0 = no descriptor. */
#define CONN_DEAD (1ULL << 31)

static struct sockaddr_un agent_addr;
static socklen_t agent_addrlen;

static uint64_t conn;            /* atomic */
static uint64_t sock_dev;        /* st_dev of our socket (sockfs); atomic */
static uint64_t next_connect_ns; /* no connection attempt before this monotonic time; atomic */
static uint32_t seq_counter;     /* atomic */
static uint32_t dropped_counter; /* atomic */

static inline int conn_fd(uint64_t c)
{
    return (int)(c & 0x7fffffffu) - 1;
}

static inline uint32_t conn_ino(uint64_t c)
{
    return (uint32_t)(c >> 32);
}

int report_configure(const char *path)
{
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof agent_addr.sun_path)
        return 0;
    memset(&agent_addr, 0, sizeof agent_addr);
    agent_addr.sun_family = AF_UNIX;
    if (path[0] == '@') { /* abstract namespace */
        memcpy(agent_addr.sun_path + 1, path + 1, n - 1);
        agent_addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
    } else {
        memcpy(agent_addr.sun_path, path, n);
        agent_addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
    }
    return SHIM_RESOLVE(connect);
}

/* 1 when descriptor c still refers to the socket we opened. */
static int still_ours(uint64_t c)
{
    struct stat st;
    if (fstat(conn_fd(c), &st) != 0)
        return 0;
    return S_ISSOCK(st.st_mode) && (uint32_t)st.st_ino == conn_ino(c) &&
           (uint64_t)st.st_dev == __atomic_load_n(&sock_dev, __ATOMIC_RELAXED);
}

static int open_agent_socket(void)
{
    int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s < 0)
        return -1;
    /* Non-blocking unix connect completes at once or fails (EAGAIN when the backlog is full). */
    if (real_connect(s, (const struct sockaddr *)&agent_addr, agent_addrlen) != 0) {
        close(s);
        return -1;
    }
    return s;
}

/* Lowest descriptor number to move our socket to, or -1 to leave it where it is. */
static int fd_floor(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY ||
        rl.rlim_cur >= FD_FLOOR + 64)
        return FD_FLOOR;
    return rl.rlim_cur > 128 ? (int)rl.rlim_cur - 64 : -1;
}

static int move_high(int fd)
{
    int floor = fd_floor();
    if (floor <= fd)
        return fd;
    int hi = fcntl(fd, F_DUPFD_CLOEXEC, floor);
    if (hi < 0)
        return fd;
    close(fd);
    return hi;
}

/* A connection stopped working (dead) or stopped being ours (stolen): forget it, and allow one
 * immediate reconnection. */
static void conn_lost(uint64_t c, int stolen)
{
    uint64_t desired = stolen ? 0 : (c | CONN_DEAD);
    if (__atomic_compare_exchange_n(&conn, &c, desired, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
        __atomic_store_n(&next_connect_ns, 0, __ATOMIC_RELAXED);
}

static uint64_t reconnect(void)
{
    uint64_t now = shim_mono_ns();
    uint64_t next = __atomic_load_n(&next_connect_ns, __ATOMIC_RELAXED);
    if ((int64_t)(now - next) < 0)
        return 0;
    /* One attempt per second, by the one thread that wins this CAS. */
    if (!__atomic_compare_exchange_n(&next_connect_ns, &next, now + 1000000000u, 0,
                                     __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
        return 0;
    int s = open_agent_socket();
    if (s < 0)
        return 0;
    uint64_t cur = __atomic_load_n(&conn, __ATOMIC_ACQUIRE);
    int fd, fresh;
    if (cur != 0 && still_ours(cur)) { /* replace our dead socket in place */
        fd = conn_fd(cur);
        fresh = 0;
        if (dup3(s, fd, O_CLOEXEC) < 0) {
            close(s);
            return 0;
        }
        close(s);
    } else {
        fd = move_high(s);
        fresh = 1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        if (fresh)
            close(fd);
        return 0;
    }
    __atomic_store_n(&sock_dev, (uint64_t)st.st_dev, __ATOMIC_RELAXED);
    uint64_t c = ((uint64_t)(uint32_t)st.st_ino << 32) | (uint32_t)(fd + 1);
    __atomic_store_n(&conn, c, __ATOMIC_RELEASE);
    return c;
}

/* The current connection if it is usable, else a new one if an attempt is allowed (then *fresh
 * is set); 0 if none. */
static uint64_t usable_conn(int *fresh)
{
    uint64_t c = __atomic_load_n(&conn, __ATOMIC_ACQUIRE);
    *fresh = 0;
    if (c != 0 && !(c & CONN_DEAD)) {
        if (SHIM_LIKELY(still_ours(c)))
            return c;
        conn_lost(c, 1); /* closed or reused by the program: never touch that number again */
    }
    c = reconnect();
    *fresh = c != 0;
    return c;
}

static void stamp(uint8_t *buf, size_t len)
{
    rec_set_u16(buf, HDR_LENGTH, (uint16_t)len);
    rec_set_u32(buf, HDR_SEQ, __atomic_add_fetch(&seq_counter, 1, __ATOMIC_RELAXED));
    rec_set_u32(buf, HDR_DROPPED, __atomic_load_n(&dropped_counter, __ATOMIC_RELAXED));
}

int report_send(uint8_t *buf, size_t len)
{
    int stamped = 0;
    for (int attempt = 0; attempt < 2; attempt++) {
        int fresh;
        uint64_t c = usable_conn(&fresh);
        if (c == 0)
            break;
        if (fresh && buf[HDR_KIND] != KIND_PROC_START)
            shim_start_on_new_connection(); /* goes first, with its own seq */
        if (!stamped) {
            stamp(buf, len);
            stamped = 1;
        }
        ssize_t n = send(conn_fd(c), buf, len, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n == (ssize_t)len)
            return 0;
        if (n >= 0 || errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS ||
            errno == EINTR || errno == EMSGSIZE || errno == ENOMEM)
            break; /* the agent is slow: drop this one, keep the connection */
        conn_lost(c, 0);
    }
    if (!stamped)
        stamp(buf, len);
    __atomic_add_fetch(&dropped_counter, 1, __ATOMIC_RELAXED);
    return -1;
}

static void stamp_detached(uint8_t *buf, size_t len)
{
    rec_set_u16(buf, HDR_LENGTH, (uint16_t)len);
    rec_set_u32(buf, HDR_SEQ, 0);
    rec_set_u32(buf, HDR_DROPPED, 0);
}

void report_send_detached(uint8_t *buf, size_t len)
{
    stamp_detached(buf, len);
    uint64_t c = __atomic_load_n(&conn, __ATOMIC_ACQUIRE);
    if (c != 0 && !(c & CONN_DEAD) && still_ours(c) &&
        send(conn_fd(c), buf, len, MSG_DONTWAIT | MSG_NOSIGNAL) == (ssize_t)len)
        return;
    /* Our descriptor table is private even when our memory is not: a temporary socket is ours.
     * The agent may read it before or after every other connection of the workload, even once
     * they are all closed and the workload forgotten, so it names its workload itself: its first
     * record is this process's own start (a vfork child is a new process running its parent's
     * image). */
    int s = open_agent_socket();
    if (s < 0)
        return;
    uint32_t pid; /* the record's own: little-endian, as the host */
    memcpy(&pid, buf + HDR_PID, sizeof pid);
    /* The start record is built off the stack (the caller's record is on it, maybe on a signal
     * handler's small stack), in a private mapping: no allocator, and unmapped before returning,
     * as our memory is our parent's. */
    int saved = errno;
    void *start = mmap(NULL, REC_MAX, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (start != MAP_FAILED) {
        size_t n = shim_build_start(start, REC_MAX, (int)pid, FLAG_FORKED | FLAG_NODEDUP);
        stamp_detached(start, n);
        (void)send(s, start, n, MSG_DONTWAIT | MSG_NOSIGNAL);
        (void)send(s, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL);
        munmap(start, REC_MAX);
    }
    close(s);
    errno = saved;
}

void report_reset_child(void)
{
    uint64_t c = __atomic_load_n(&conn, __ATOMIC_ACQUIRE);
    if (c != 0 && still_ours(c))
        close(conn_fd(c)); /* the parent's connection: the child gets its own */
    __atomic_store_n(&conn, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&next_connect_ns, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&seq_counter, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&dropped_counter, 0, __ATOMIC_RELAXED);
}

void report_first_in(uint8_t *buf, size_t len, size_t cap, int foreign, int slot,
                     const char *caller, size_t caller_len)
{
    /* CALLER is appended in place, after the record in the hook's own buffer (left out when none
     * is known): no copy of the record, as hooks may run on a signal handler's small stack. */
    char name[CALLER_MAX + 1]; /* one more: a longer path is cut and flagged */
    if (caller == NULL) {
        uintptr_t base;
        caller = name;
        caller_len = shim_caller ? shim_module_of(shim_caller, name, sizeof name, &base) : 0;
    }
    if (caller_len > 0 && len <= cap) {
        struct rec r = {.buf = buf, .len = len, .cap = cap < REC_MAX ? cap : REC_MAX};
        if (len + 4 + (caller_len < CALLER_MAX ? caller_len : CALLER_MAX) <= r.cap)
            rec_put_bytes(&r, TAG_CALLER, caller, caller_len, CALLER_MAX);
        else
            rec_add_flags(&r, FLAG_TRUNCATED); /* a full record: CALLER left out, not cut */
        len = r.len;
    }
    if (foreign) {
        report_send_detached(buf, len);
        return;
    }
    shim_before_record();
    report_send(buf, len);
    if (slot >= 0)
        dedup_store(slot, buf, len);
}
