/* Internal interface of the telltale shim: record format constants, process state, the
 * re-entrancy guard, the record builder, the dedup table and the transport.
 *
 * Everything here has hidden visibility (the Makefile builds with -fvisibility=hidden); only the
 * hooks marked SHIM_EXPORT are visible, and shim.map lists them.
 */
#ifndef TELLTALE_SHIM_H
#define TELLTALE_SHIM_H

/* The hooks receive whatever the program passes, NULL included, and must keep their NULL checks:
 * drop glibc's nonnull annotations, which would let the compiler assume them away. This header is
 * included first by every source file, before any system header. */
#define __attribute_nonnull__(params)
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* execvpe, execveat, gettid, getresuid, dup3, environ */
#endif

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the record format carries raw sockaddr bytes; only little-endian hosts are supported"
#endif

#define SHIM_EXPORT __attribute__((visibility("default")))
#define SHIM_LIKELY(x) __builtin_expect(!!(x), 1)
#define SHIM_UNLIKELY(x) __builtin_expect(!!(x), 0)

/* ---- record format v1 (FORMAT.md) ---------------------------------------------------------- */

enum {
    REC_MAGIC = 0x5454,
    REC_VERSION = 1,
    REC_HEADER_SIZE = 40,
    REC_MAX = 4096,
};

enum rec_kind {
    KIND_PROC_START = 1,
    KIND_EXEC = 2,
    KIND_CONNECT = 3,
    KIND_BIND = 4,
    KIND_LISTEN = 5,
    KIND_SOCKET = 6,
    KIND_ACCEPT = 7,
    KIND_SEND = 8,
    KIND_RESOLVE = 9,
    KIND_FILE_OPEN = 10,
    KIND_FILE_CHANGE = 11,
    KIND_CREDENTIALS = 12,
    KIND_PTRACE = 13,
    KIND_PRCTL = 14,
    KIND_MEMFD = 15,
};

enum rec_flag {
    FLAG_REPEAT = 1u << 0,
    FLAG_TRUNCATED = 1u << 1,
    FLAG_FORKED = 1u << 2,
    FLAG_NODEDUP = 1u << 3,
};

enum rec_tag {
    TAG_EXE = 1,
    TAG_ARGV = 2,
    TAG_CWD = 3,
    TAG_CREDS = 4,
    TAG_SOCKADDR = 5,
    TAG_RESULT = 6,
    TAG_SOCKINFO = 7,
    TAG_BACKLOG = 8,
    TAG_PATH = 9,
    TAG_VARIANT = 10,
    TAG_WORKLOAD = 11,
    TAG_CHILD_PID = 12,
    TAG_NAME = 13,
    TAG_ADDRESSES = 14,
    TAG_FUNCTION = 15,
    TAG_IDS = 16,
    TAG_GROUPS = 17,
    TAG_REQUEST = 18,
    TAG_TARGET_PID = 19,
    TAG_OPTION = 20,
    TAG_ARGUMENT = 21,
    TAG_MEMFD_NAME = 22,
    TAG_MEMFD_FLAGS = 23,
    TAG_FILE_FLAGS = 24,
    TAG_FILE_MODE = 25,
    TAG_CHANGE = 26,
    TAG_NEW_PATH = 27,
};

enum file_change {
    CHANGE_CHMOD = 1,
    CHANGE_RENAME = 2,
    CHANGE_UNLINK = 3,
};

enum exec_variant {
    VAR_EXECVE = 1,
    VAR_EXECV = 2,
    VAR_EXECVP = 3,
    VAR_EXECVPE = 4,
    VAR_EXECL = 5,
    VAR_EXECLP = 6,
    VAR_EXECLE = 7,
    VAR_FEXECVE = 8,
    VAR_EXECVEAT = 9,
    VAR_POSIX_SPAWN = 10,
    VAR_POSIX_SPAWNP = 11,
    VAR_SYSTEM = 12,
    VAR_POPEN = 13,
};

/* Header offsets. */
enum {
    HDR_MAGIC = 0,
    HDR_VERSION = 2,
    HDR_KIND = 3,
    HDR_LENGTH = 4,
    HDR_FLAGS = 6,
    HDR_PID = 8,
    HDR_PPID = 12,
    HDR_TID = 16,
    HDR_COUNT = 20,
    HDR_TIME = 24,
    HDR_DROPPED = 32,
    HDR_SEQ = 36,
};

/* Caps on byte-string fields. */
enum {
    PATH_FIELD_MAX = 1024, /* EXE, CWD, PATH */
    WORKLOAD_MAX = 512,    /* TELLTALE_WORKLOAD */
    NAME_MAX_FIELD = 256,  /* NAME of a lookup */
    ADDRESSES_MAX = 1024,  /* ADDRESSES of a lookup */
    GROUPS_MAX_FIELD = 64, /* GROUPS entries of setgroups */
    MEMFD_NAME_MAX = 256,  /* MEMFD_NAME */
};

/* Library loads, W+X memory, capset, loader environment (hooks_lib.c, hooks_mem.c, procinfo.c). */
enum {
    KIND_LIBRARY_LOAD = 16,
    KIND_MEMORY_PROTECT = 17,
};

enum {
    TAG_REQUESTED = 28,       /* LIBRARY_LOAD: the name given to dlopen, when not PATH */
    TAG_LIB_FLAGS = 29,       /* LIBRARY_LOAD: u8 LIB_* */
    TAG_PROTECTION = 30,      /* MEMORY_PROTECT: i32 PROT_* */
    TAG_MAP_FLAGS = 31,       /* MEMORY_PROTECT: i32 MAP_* (mmap) */
    TAG_LENGTH = 32,          /* MEMORY_PROTECT: u64 */
    TAG_CAPABILITIES = 33,    /* PROC_START, CREDENTIALS (capset): 3 x u64 eff, perm, inh */
    TAG_LD_PRELOAD = 34,      /* PROC_START: entries other than the shim, each NUL-ended */
    TAG_LD_LIBRARY_PATH = 35, /* PROC_START: the value, verbatim */
};

enum {
    LIB_AT_START = 1u << 0,     /* loaded with the program */
    LIB_WRITABLE_DIR = 1u << 1, /* its directory is writable by the process's user */
};

/* Library-call observation (calls.c, hooks_calls.c, hooks_crypto.c, modules.c). */
enum {
    KIND_UNSAFE_CALL = 18,
    KIND_CRYPTO = 19,
};

enum {
    TAG_CALLER = 40,    /* module that made the hooked call (every first occurrence) */
    TAG_CALL_SITE = 41, /* u64: return address relative to that module's load address */
    TAG_ALGORITHM = 42, /* CRYPTO: weak algorithm */
    TAG_PROTOCOL = 43,  /* CRYPTO: old protocol version allowed */
    TAG_LIBRARY = 44,   /* CRYPTO: library providing the function */
    TAG_PURPOSE = 45,   /* CRYPTO: digest, cipher or tls */
};

enum {
    CALLER_MAX = 512,     /* CALLER, LIBRARY */
    CRYPTO_WORD_MAX = 32, /* ALGORITHM, PROTOCOL, PURPOSE */
};

/* Room a hook's record buffer keeps after its own fields for the CALLER that report_first appends
 * in place. */
enum { CALLER_FIELD = 4 + CALLER_MAX };

/* sizeof an array; does not compile when `a` is a pointer. */
#define SHIM_ARRAY_SIZE(a)                                                                   \
    (sizeof(a) +                                                                             \
     0 * sizeof(struct {                                                                     \
         int not_an_array : 1 - 2 * __builtin_types_compatible_p(__typeof__(a),              \
                                                                 __typeof__(&(a)[0]));       \
     }))

/* ---- real functions -------------------------------------------------------------------------- */

/* Declares the typed pointer to the next definition of `name` (the one the hook wraps). */
#define SHIM_REAL(name) static __typeof__(name) *real_##name

/* Nonzero when real_<name> is resolved (resolving it on first use). */
#define SHIM_RESOLVE(name)                                                                   \
    (SHIM_LIKELY(__atomic_load_n(&real_##name, __ATOMIC_RELAXED) != NULL) ||                 \
     shim_resolve((void **)&real_##name, #name))

/* In a hook: resolve real_<name>, or fail the call the way the function reports errors
 * (set errno to ENOSYS and return `failval`). Never crashes on a missing symbol. */
#define SHIM_REAL_OR_FAIL(name, failval)                                                     \
    do {                                                                                     \
        SHIM_NOTE_CALLER();                                                                  \
        if (SHIM_UNLIKELY(!SHIM_RESOLVE(name))) {                                            \
            errno = ENOSYS;                                                                  \
            return failval;                                                                  \
        }                                                                                    \
    } while (0)

/* Resolve every hook's real function (called once at initialisation). */
void hooks_net_resolve(void);
void hooks_resolve_resolve(void);
void hooks_proc_resolve(void);
void hooks_priv_resolve(void);
void hooks_file_resolve(void);
void hooks_lib_resolve(void);
void hooks_mem_resolve(void);
void hooks_shell_resolve(void);
void hooks_fd_resolve(void); /* called by hooks_net_resolve */

/* Stores dlsym(RTLD_NEXT, name) into *slot; returns 0 if the symbol does not exist. errno is
 * preserved. */
int shim_resolve(void **slot, const char *name);

/* ---- process state and guard (shim.c) -------------------------------------------------------- */

enum { INIT_NONE = 0, INIT_RUNNING = 1, INIT_DONE = 2 };

extern int shim_init_state;   /* INIT_*; atomic */
extern int shim_active;       /* 1 when TELLTALE_SOCKET is set and usable; fixed after init */
extern int shim_cached_pid;   /* pid of the process that owns the dedup table; atomic */
extern __thread int shim_busy __attribute__((tls_model("initial-exec")));

/* Return address of the hooked call this thread is handling (the program's or library's call
 * site), noted by SHIM_REAL_OR_FAIL at a hook's entry unless the shim is already busy on this
 * thread; report_first names the module it lies in (CALLER). A hook that can send a record without
 * going through SHIM_REAL_OR_FAIL must call SHIM_NOTE_CALLER() itself on entry, or its records
 * name the caller of the thread's previous hooked call. */
extern __thread const void *shim_caller __attribute__((tls_model("initial-exec")));
#define SHIM_NOTE_CALLER()                                                                   \
    do {                                                                                     \
        if (SHIM_LIKELY(!shim_busy) || shim_reclaim(__builtin_frame_address(0)))             \
            shim_caller = __builtin_return_address(0);                                       \
    } while (0)

/* The frame of the name-lookup hook (hooks_resolve.c) holding the guard across its real call on
 * this thread; NULL when no lookup is in progress. While it is set, the guard hides the
 * resolver's own calls only: the shim's state is not being changed. */
extern __thread const void *shim_lookup_frame __attribute__((tls_model("initial-exec")));

/* Called with the guard held, from code whose frame is `frame`: releases the guard and returns 1
 * when a name lookup holds it and that lookup is over although its hook never returned (the
 * program left it with siglongjmp from a signal handler): `frame` is not below the lookup hook's
 * frame, on the thread's normal stack. Returns 0 otherwise (the shim's own work, a call made
 * within the lookup, a signal handler on an alternate stack). Costs nothing unless a lookup holds
 * the guard; then a few compares: no system call, no memory read but the thread's variables. */
int shim_reclaim(const void *frame);

/* Completes initialisation when a hook runs before the constructor; returns 1 when done. */
int shim_init_lazy(void);

/* Enter the shim's own work from a hook: 0 when the shim is inert, not yet initialised, or
 * already running on this thread (a signal handler or the shim's own libc use re-entering);
 * the hook then just calls through. On 1, call shim_leave() when done. */
static inline int shim_enter(void)
{
    if (SHIM_UNLIKELY(shim_busy) && !shim_reclaim(__builtin_frame_address(0)))
        return 0;
    if (SHIM_UNLIKELY(__atomic_load_n(&shim_init_state, __ATOMIC_ACQUIRE) != INIT_DONE) &&
        !shim_init_lazy())
        return 0;
    if (!shim_active)
        return 0;
    shim_busy = 1;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    return 1;
}

static inline void shim_leave(void)
{
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    shim_busy = 0;
}

/* 1 when the caller runs in a process that shares our memory without having gone through the
 * fork handler (a vfork child, or a child of a raw clone/_Fork): it must not touch the dedup
 * table or the connection state. Costs a getpid() system call. */
static inline int shim_foreign_process(int *pid_out)
{
    int pid = (int)getpid();
    *pid_out = pid;
    return pid != __atomic_load_n(&shim_cached_pid, __ATOMIC_RELAXED);
}

enum { FD_LINK_SIZE = 32 };

/* Writes "/proc/self/fd/<fd>" (fd >= 0), the link naming the file open on fd, into out; returns
 * its length. Allocates nothing and makes no system call. */
static inline size_t shim_fd_link(int fd, char out[FD_LINK_SIZE])
{
    static const char prefix[] = "/proc/self/fd/";
    char digits[12];
    size_t nd = 0, at = sizeof prefix - 1;
    unsigned v = (unsigned)fd;
    memcpy(out, prefix, at);
    do {
        digits[nd++] = (char)('0' + v % 10);
        v /= 10;
    } while (v && nd < sizeof digits);
    while (nd)
        out[at++] = digits[--nd];
    out[at] = '\0';
    return at;
}


/* Builds the PROC_START record of process `pid` (the header's length, seq and dropped are left for
 * the sender to fill) with `flags`; returns its length. Reads the process state and the workload
 * descriptor only, so a process sharing our memory (vfork child) may call it. */
size_t shim_build_start(uint8_t *buf, size_t cap, int pid, unsigned flags);

/* Called before any record of this process is sent: a fork child first sends its FORKED
 * PROC_START. */
void shim_before_record(void);

/* Called by the transport when a new connection is up, before its first record: re-sends the
 * PROC_START if it was attempted but never delivered. */
void shim_start_on_new_connection(void);

/* Monotonic coarse clock in nanoseconds (vDSO, a few ns). */
uint64_t shim_mono_ns(void);

/* ---- hashing --------------------------------------------------------------------------------- */

#define HASH_MUL 0x9E3779B97F4A7C15ULL

/* Mixes n bytes into h; the length is mixed in, so consecutive calls keep boundaries. */
static inline uint64_t hash_mem(uint64_t h, const void *p, size_t n)
{
    const unsigned char *s = p;
    size_t left = n;
    while (left >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ w) * HASH_MUL;
        h ^= h >> 32;
        s += 8;
        left -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, s, left);
    h = (h ^ w ^ ((uint64_t)n << 56)) * HASH_MUL;
    h ^= h >> 29;
    return h;
}

/* Final avalanche; never returns 0 (0 marks an empty dedup slot). */
static inline uint64_t hash_final(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h ? h : 1;
}

/* ---- record builder (record.c) --------------------------------------------------------------- */

struct rec {
    uint8_t *buf;
    size_t len;
    size_t cap;
};

/* Starts a record of `kind` for process `pid` in buf (cap ≥ REC_HEADER_SIZE): header with
 * ppid, tid, count 1 and the current time; length, seq and dropped are filled by the sender. */
void rec_begin(struct rec *r, uint8_t *buf, size_t cap, unsigned kind, int pid);
/* Adds a fixed-size field whole, or not at all (then TRUNCATED is set). */
void rec_put(struct rec *r, unsigned tag, const void *data, size_t n);
/* Adds a byte-string field cut to at most `max` bytes and to the room left (TRUNCATED when cut). */
void rec_put_bytes(struct rec *r, unsigned tag, const void *data, size_t n, size_t max);
/* Adds ARGV from a NULL-terminated array: each argument followed by a NUL, cut to fit. */
void rec_put_argv(struct rec *r, char *const argv[]);
void rec_put_i32(struct rec *r, unsigned tag, int32_t v);
void rec_put_u32(struct rec *r, unsigned tag, uint32_t v);
void rec_put_u8(struct rec *r, unsigned tag, uint8_t v);
void rec_add_flags(struct rec *r, unsigned flags);
/* Bytes left for one more field's body (0 if not even a field header fits). */
size_t rec_room(const struct rec *r);

void rec_set_u16(uint8_t *buf, size_t off, uint16_t v);
void rec_set_u32(uint8_t *buf, size_t off, uint32_t v);
void rec_set_u64(uint8_t *buf, size_t off, uint64_t v);
uint16_t rec_get_u16(const uint8_t *buf, size_t off);

/* Refreshes pid, ppid, tid and time of a stored record about to be re-sent. */
void rec_restamp(uint8_t *buf, int pid, int ppid, int tid, uint64_t time_ns);
uint64_t rec_now_ns(void);

/* Copies a record of `len` bytes into dst (cap bytes), cutting the first byte-string field that
 * does not fit and dropping the fields after it (TRUNCATED set). Returns the copied length. */
size_t rec_copy_fit(uint8_t *dst, size_t cap, const uint8_t *src, size_t len);

/* Adds what PROC_START carries beyond shim.c's fields (procinfo.c): CAPABILITIES, LD_PRELOAD,
 * LD_LIBRARY_PATH. Reads the process state only, so a vfork child may call it. */
void procinfo_put_start(struct rec *r);

/* Reports that system or popen (`variant`) is about to run `command` through /bin/sh -c, as an
 * EXEC record (hooks_proc.c). errno is preserved. */
void exec_report_shell(unsigned variant, const char *command);

/* ---- dedup table (dedup.c) ------------------------------------------------------------------- */

enum { DEDUP_SLOTS = 256, DEDUP_REC_MAX = 1024 };
enum { DEDUP_HIT = 0, DEDUP_CLAIMED = 1, DEDUP_FULL = 2 };

struct dedup_meta {
    uint64_t key;     /* identity hash; 0 = empty */
    uint32_t pending; /* repeats not yet reported */
    uint16_t state;   /* SLOT_* of dedup.c */
    uint16_t len;     /* length of the stored record */
};
/* dedup.c's table; outside dedup.c only dedup_hit reads it. */
extern struct dedup_meta shim_dedup_meta[DEDUP_SLOTS];
/* dedup_hit past its key's first slot. */
int dedup_hit_probe(uint64_t key);

/* Counts a repeat and returns 1 when `key` is already in the table; 0 otherwise. Lock-free. The
 * common case, a key found in its first slot, is inline. */
static inline int dedup_hit(uint64_t key)
{
    struct dedup_meta *m = &shim_dedup_meta[(unsigned)key & (DEDUP_SLOTS - 1)];
    if (SHIM_LIKELY(__atomic_load_n(&m->key, __ATOMIC_ACQUIRE) == key)) {
        __atomic_fetch_add(&m->pending, 1, __ATOMIC_RELAXED);
        return 1;
    }
    return dedup_hit_probe(key);
}
/* Claims a slot for `key`: DEDUP_CLAIMED (then *slot is set and the caller must dedup_store),
 * DEDUP_HIT (another thread stored it meanwhile; the repeat is counted), or DEDUP_FULL. */
int dedup_claim(uint64_t key, int *slot);
/* Decides whether a hook sends the behaviour `key` as a first occurrence. Returns 0 when it is a
 * repeat (counted; nothing to send). Otherwise returns 1 with *pid and *foreign set for
 * report_first, *slot set when a slot was claimed (left as is otherwise), and FLAG_NODEDUP added
 * to *flags when the record goes undeduplicated: the caller is a process sharing our memory
 * (whose table is not touched), or the table is full. With `tick`, a process owning the table
 * runs dedup_tick first. */
int dedup_first(uint64_t key, int tick, int *pid, int *foreign, int *slot, unsigned *flags);
/* Stores the first record of a claimed slot (cut to DEDUP_REC_MAX) and publishes the slot. */
void dedup_store(int slot, const uint8_t *rec, size_t len);
/* Sends a REPEAT summary for every slot with unreported repeats. */
void dedup_flush(void);
/* Flushes when at least a second has passed since the last flush. A thread that calls it more than
 * about once a millisecond reads the clock only every DEDUP_TICK_EVERY calls (dedup.c). */
enum { DEDUP_TICK_EVERY = 16 };
extern __thread unsigned shim_tick_skip __attribute__((tls_model("initial-exec")));
void dedup_tick_check(void);
static inline void dedup_tick(void)
{
    if (SHIM_LIKELY(shim_tick_skip != 0)) {
        shim_tick_skip--;
        return;
    }
    dedup_tick_check();
}
/* Forgets every entry (fork child). */
void dedup_reset(void);

/* ---- socket types by descriptor (fdtable.c) -------------------------------------------------- */

/* One word per descriptor number: SOCK_* type in the low 8 bits (0: unknown), a version above.
 * A cached type may be stale (fdtable.c says when): use it to key a dedup lookup only, and re-read
 * the type with getsockopt before reporting a first occurrence. */
enum { FDTAB_SIZE = 65536 };
extern uint32_t shim_fdtab[FDTAB_SIZE];

/* The entry of fd (type and version), 0 when fd is out of the table's range. Lock-free. */
static inline uint32_t fdtab_get(int fd)
{
    if (SHIM_UNLIKELY((unsigned)fd >= FDTAB_SIZE))
        return 0;
    return __atomic_load_n(&shim_fdtab[fd], __ATOMIC_ACQUIRE);
}

static inline int fdtab_type(uint32_t entry)
{
    return (int)(entry & 0xff);
}

/* A socket of `type` was just created on fd (a type outside 1..255 is stored as unknown). */
void fdtab_set(int fd, int type);
/* fd was closed or now refers to something else. */
void fdtab_forget(int fd);
/* To read, with the entry `seen`, before a getsockopt whose type goes to fdtab_learn. */
unsigned fdtab_epoch(void);
/* Stores `type`, just read with getsockopt, unless the entry changed since it read `seen` or a
 * close_range/closefrom ran since fdtab_epoch gave `epoch`; a type ≤ 0 (getsockopt failed)
 * forgets the entry. */
void fdtab_learn(int fd, uint32_t seen, unsigned epoch, int type);

/* ---- transport (report.c) -------------------------------------------------------------------- */

/* Prepares the agent address from TELLTALE_SOCKET; returns 0 if it is unusable. */
int report_configure(const char *path);
/* Fills length, seq and dropped, then sends the record; returns 0 when delivered, -1 when
 * dropped (the drop is counted). Never blocks. */
int report_send(uint8_t *buf, size_t len);
/* For a process that shares our memory (vfork child): sends with seq 0 and dropped 0, over the
 * existing connection if it is still ours, else over a temporary one that starts with the
 * process's own PROC_START (FORKED | NODEDUP); touches no shared state. */
void report_send_detached(uint8_t *buf, size_t len);
/* Sends a first occurrence: detached for a process sharing our memory (`foreign`), else after
 * any pending start record, keeping a copy in its claimed dedup `slot` (-1: none) for repeat
 * summaries. The record is the first `len` bytes of the array `buf` (a pointer does not compile),
 * whose room after them receives CALLER: a hook sizes it with CALLER_FIELD bytes to spare. */
#define report_first(buf, len, foreign, slot)                                                \
    report_first_in((buf), (len), SHIM_ARRAY_SIZE(buf), (foreign), (slot), NULL, 0)
/* Fork child: closes the inherited connection and resets counters. */
void report_reset_child(void);

/* ---- caller modules (modules.c) and library calls (calls.c) ---------------------------------- */

/* Names the loaded module (program or shared library) whose code contains `addr`: copies its
 * path, cut to `cap` bytes, into out and returns its length, and its load address into *base;
 * returns 0 (*base = 0) when no module contains it. Allocates nothing and takes no lock
 * (_dl_find_object; before glibc 2.35, the table of the last shim_modules_refresh), so a fork
 * child, a vfork child or a signal handler may call it. */
size_t shim_module_of(const void *addr, char *out, size_t cap, uintptr_t *base);
/* Brings the fallback module table up to date with the loader's list (cheap when nothing changed;
 * nothing with _dl_find_object, or in a fork child). Takes the loader's lock: only for the
 * library walk to call, never from a lookup. */
void shim_modules_refresh(void);
/* 1 when the loader relocated the d_ptr entries of the loaded dynamic section at `dynamic` in
 * place, as glibc 2.35 and later do only when its PT_DYNAMIC segment is writable; 0 when they are
 * link-time values (to add the load address to). Lock-free (_dl_find_object and the object's
 * mapped ELF header); before glibc 2.35, 1. */
int shim_dynamic_relocated(const void *dynamic);
/* Fork child: drops a module table whose rebuild another thread had begun (it never finishes). */
void shim_modules_reset(void);

/* Sends a first occurrence like report_first, adding CALLER: the module of shim_caller when
 * `caller` is NULL, else the given name (none when caller_len is 0: the record has its own). */
#define report_first_caller(buf, len, foreign, slot, caller, caller_len)                     \
    report_first_in((buf), (len), SHIM_ARRAY_SIZE(buf), (foreign), (slot), (caller), (caller_len))
/* Both: the record is `len` bytes of buf, which has `cap` bytes. CALLER is appended in place when
 * it fits within cap (and REC_MAX), else left out with TRUNCATED. */
void report_first_in(uint8_t *buf, size_t len, size_t cap, int foreign, int slot,
                     const char *caller, size_t caller_len);

/* Sends REPEAT summaries of the library-call sites with unreported repeats (dedup_flush). */
void calls_flush(void);
/* Forgets every call site (with dedup_reset). */
void calls_reset(void);

#endif /* TELLTALE_SHIM_H */
