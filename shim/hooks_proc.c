/* Process hooks: every exec entry point and posix_spawn / posix_spawnp.
 *
 * glibc's execl, execvp, ... call its internal __execve, not the public execve, so each public
 * entry point is hooked itself. Exec records are sent before the real call (a successful exec
 * does not return) and the repeat counts of the process are flushed, since the image is about to
 * be replaced. posix_spawn records are sent after the call, with its result and the child's pid.
 *
 * Identity for dedup: kind + variant + path + hash of the arguments. In a process that shares our
 * memory without having been through the fork handler (a vfork child, the usual way to exec from
 * a large process), the record is sent directly, undeduplicated, without touching the table.
 *
 * Every entry point runs the program with telltale's variables restored in its environment
 * (propagate.c): the envp it is given, or, for execv, execvp, execl and execlp, `environ`, which the
 * program may have emptied (clearenv()); those four call execve or execvpe with it, as glibc's own
 * do.
 *
 * The argument strings are read before the call: a program passing invalid pointers to exec, which
 * the kernel would refuse with EFAULT, can fault inside the shim instead.
 */
#include "shim.h"
#include "coverage.h"

#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <spawn.h>
#include <stdarg.h>
#include <sys/mman.h>

SHIM_REAL(execve);
SHIM_REAL(execvpe);
SHIM_REAL(fexecve);
SHIM_REAL(execveat);
SHIM_REAL(posix_spawn);
SHIM_REAL(posix_spawnp);

void hooks_proc_resolve(void)
{
    (void)SHIM_RESOLVE(execve);
    (void)SHIM_RESOLVE(execvpe);
    (void)SHIM_RESOLVE(fexecve);
    (void)SHIM_RESOLVE(execveat);
    (void)SHIM_RESOLVE(posix_spawn);
    (void)SHIM_RESOLVE(posix_spawnp);
}

struct exec_event {
    unsigned variant;
    const char *path; /* may be NULL */
    size_t path_len;
    char *const *argv; /* may be NULL */
    int has_result;
    int ret, err;
    int child; /* > 0: CHILD_PID */
};

static uint64_t exec_key(const struct exec_event *e)
{
    uint64_t h = ((uint64_t)KIND_EXEC << 32) | e->variant;
    h = hash_mem(h, e->path ? e->path : "", e->path_len);
    for (size_t i = 0; e->argv && e->argv[i]; i++)
        h = hash_mem(h, e->argv[i], strlen(e->argv[i]));
    return hash_final(h);
}

/* An exec record holds VARIANT, RESULT, CHILD_PID, PATH, up to EXEC_ARGV_MAX bytes of ARGV and
 * CALLER, and its buffer no more: exec may be called from a signal handler, on a small stack. */
enum {
    EXEC_ARGV_MAX = 2048,
    EXEC_REC_MAX = REC_HEADER_SIZE + 5 + 12 + 8 + 4 + PATH_FIELD_MAX + 4 + EXEC_ARGV_MAX +
                   CALLER_FIELD,
};

/* Sends the first occurrence of an exec or spawn. Not inlined: its buffer is off the stack before
 * the flush that may follow. */
static __attribute__((noinline)) void exec_send(const struct exec_event *e, int pid, int foreign,
                                                int slot, unsigned flags)
{
    uint8_t buf[EXEC_REC_MAX];
    struct rec r;
    rec_begin(&r, buf, sizeof buf - CALLER_FIELD, KIND_EXEC, pid); /* CALLER: report_first */
    rec_add_flags(&r, flags);
    rec_put_u8(&r, TAG_VARIANT, (uint8_t)e->variant);
    if (e->has_result) {
        int32_t result[2] = {e->ret, e->err};
        rec_put(&r, TAG_RESULT, result, sizeof result);
    }
    if (e->child > 0)
        rec_put_u32(&r, TAG_CHILD_PID, (uint32_t)e->child);
    if (e->path)
        rec_put_bytes(&r, TAG_PATH, e->path, e->path_len, PATH_FIELD_MAX);
    rec_put_argv(&r, e->argv); /* last: it takes whatever room is left */
    report_first(buf, r.len, foreign, slot);
}

/* Reports an exec or spawn; `before_exec` flushes the process's repeat counts too. */
static void exec_report(const struct exec_event *e, int before_exec)
{
    int cancel, pid, foreign, slot = -1;
    unsigned flags = 0;
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel);
    if (dedup_first(exec_key(e), !before_exec, &pid, &foreign, &slot, &flags))
        exec_send(e, pid, foreign, slot, flags);
    if (before_exec && !foreign)
        dedup_flush();
    pthread_setcancelstate(cancel, NULL);
}

/* Reports an exec about to happen; errno is left as the program set it. */
static void exec_before(unsigned variant, const char *path, size_t path_len, char *const argv[])
{
    int saved = errno;
    if (shim_enter()) {
        struct exec_event e = {.variant = variant, .path = path, .path_len = path_len,
                               .argv = argv};
        exec_report(&e, 1);
        shim_leave();
    }
    errno = saved;
}

static void exec_before_path(unsigned variant, const char *path, char *const argv[])
{
    exec_before(variant, path, path ? strlen(path) : 0, argv);
}

/* The file a descriptor refers to (readlink of /proc/self/fd/N); -1 if unknown. */
static ssize_t fd_target(int fd, char *out, size_t cap)
{
    char link[FD_LINK_SIZE];
    if (fd < 0)
        return -1;
    shim_fd_link(fd, link);
    return readlink(link, out, cap);
}

static void exec_before_fd(unsigned variant, int fd, char *const argv[])
{
    int saved = errno;
    if (shim_enter()) {
        char target[PATH_FIELD_MAX + 1];
        ssize_t n = fd_target(fd, target, sizeof target);
        struct exec_event e = {.variant = variant, .path = n >= 0 ? target : NULL,
                               .path_len = n >= 0 ? (size_t)n : 0, .argv = argv};
        exec_report(&e, 1);
        shim_leave();
    }
    errno = saved;
}

SHIM_EXPORT int execve(const char *path, char *const argv[], char *const envp[])
{
    SHIM_REAL_OR_FAIL(execve, -1);
    SHIM_ENV_REPAIR(env, envp);
    coverage_check_path(VAR_EXECVE, AT_FDCWD, path, 0, env_plan.stripped);
    exec_before_path(VAR_EXECVE, path, argv);
    return real_execve(path, argv, env);
}

/* execv, execvp, execl and execlp pass `environ` on: glibc's own are execve and execvpe given
 * it, which is what the hooks call, with `environ` repaired like any other environment (a program
 * may have emptied it, with clearenv() or by assigning environ). */
SHIM_EXPORT int execv(const char *path, char *const argv[])
{
    SHIM_REAL_OR_FAIL(execve, -1);
    SHIM_ENV_REPAIR(env, environ);
    coverage_check_path(VAR_EXECV, AT_FDCWD, path, 0, env_plan.stripped);
    exec_before_path(VAR_EXECV, path, argv);
    return real_execve(path, argv, env);
}

SHIM_EXPORT int execvp(const char *file, char *const argv[])
{
    SHIM_REAL_OR_FAIL(execvpe, -1);
    SHIM_ENV_REPAIR(env, environ);
    coverage_check_path(VAR_EXECVP, AT_FDCWD, file, 1, env_plan.stripped);
    exec_before_path(VAR_EXECVP, file, argv);
    return real_execvpe(file, argv, env);
}

SHIM_EXPORT int execvpe(const char *file, char *const argv[], char *const envp[])
{
    SHIM_REAL_OR_FAIL(execvpe, -1);
    SHIM_ENV_REPAIR(env, envp);
    coverage_check_path(VAR_EXECVPE, AT_FDCWD, file, 1, env_plan.stripped);
    exec_before_path(VAR_EXECVPE, file, argv);
    return real_execvpe(file, argv, env);
}

SHIM_EXPORT int fexecve(int fd, char *const argv[], char *const envp[])
{
    SHIM_REAL_OR_FAIL(fexecve, -1);
    SHIM_ENV_REPAIR(env, envp);
    coverage_check_fd(VAR_FEXECVE, fd, env_plan.stripped);
    exec_before_fd(VAR_FEXECVE, fd, argv);
    return real_fexecve(fd, argv, env);
}

SHIM_EXPORT int execveat(int dirfd, const char *path, char *const argv[], char *const envp[],
                         int flags)
{
    SHIM_REAL_OR_FAIL(execveat, -1);
    SHIM_ENV_REPAIR(env, envp);
    if (path != NULL && path[0] == '\0' && (flags & AT_EMPTY_PATH)) {
        coverage_check_fd(VAR_EXECVEAT, dirfd, env_plan.stripped);
        exec_before_fd(VAR_EXECVEAT, dirfd, argv);
    } else {
        coverage_check_path(VAR_EXECVEAT, dirfd, path, 0, env_plan.stripped);
        exec_before_path(VAR_EXECVEAT, path, argv);
    }
    return real_execveat(dirfd, path, argv, env, flags);
}

/* ---- execl, execlp, execle: collect the variadic arguments ------------------------------------ */

/* Like glibc, no malloc (these must work after vfork and in signal handlers): up to
 * EXECL_STACK_ARGS pointers on the stack, beyond that an anonymous mapping. */
enum { EXECL_STACK_ARGS = 32 }; /* 256 bytes: an execl from a small signal stack must fit */

struct arg_array {
    char *stack[EXECL_STACK_ARGS];
    char **argv;
    size_t mapped; /* bytes mapped, 0 when on the stack */
};

static char **arg_array_get(struct arg_array *a, size_t n)
{
    a->mapped = 0;
    if (n <= EXECL_STACK_ARGS) {
        a->argv = a->stack;
        return a->argv;
    }
    size_t bytes = n * sizeof(char *);
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    a->mapped = bytes;
    a->argv = p;
    return a->argv;
}

static void arg_array_put(struct arg_array *a)
{
    if (a->mapped) {
        int saved = errno;
        munmap(a->argv, a->mapped);
        errno = saved;
    }
}

/* Collects arg0 and the variadic arguments up to the NULL terminator into an array from `arr`;
 * evaluates to that array or NULL (errno set). With `with_envp` (execle), `envp_out` receives the
 * pointer after the NULL. */
#define COLLECT_ARGS(arr, arg0, with_envp, envp_out)                                        \
    ({                                                                                       \
        va_list ap_;                                                                         \
        size_t argc_ = 1;                                                                    \
        char **argv_ = NULL;                                                                 \
        va_start(ap_, arg0);                                                                 \
        while (va_arg(ap_, const char *) != NULL && argc_ < INT_MAX)                         \
            argc_++;                                                                         \
        va_end(ap_);                                                                         \
        if (argc_ >= INT_MAX) {                                                              \
            errno = E2BIG;                                                                   \
        } else if ((argv_ = arg_array_get(&(arr), argc_ + 1)) == NULL) {                     \
            errno = ENOMEM;                                                                  \
        } else {                                                                             \
            va_start(ap_, arg0);                                                             \
            argv_[0] = (char *)(arg0);                                                       \
            for (size_t i_ = 1; i_ <= argc_; i_++)                                           \
                argv_[i_] = va_arg(ap_, char *);                                             \
            if (with_envp)                                                                   \
                envp_out = va_arg(ap_, char *const *);                                       \
            va_end(ap_);                                                                     \
        }                                                                                    \
        argv_;                                                                               \
    })

SHIM_EXPORT int execl(const char *path, const char *arg, ...)
{
    SHIM_REAL_OR_FAIL(execve, -1);
    struct arg_array arr;
    char *const *unused_envp = NULL;
    char **argv = COLLECT_ARGS(arr, arg, 0, unused_envp);
    (void)unused_envp;
    if (argv == NULL)
        return -1;
    SHIM_ENV_REPAIR(env, environ);
    coverage_check_path(VAR_EXECL, AT_FDCWD, path, 0, env_plan.stripped);
    exec_before_path(VAR_EXECL, path, argv);
    int ret = real_execve(path, argv, env);
    arg_array_put(&arr);
    return ret;
}

SHIM_EXPORT int execlp(const char *file, const char *arg, ...)
{
    SHIM_REAL_OR_FAIL(execvpe, -1);
    struct arg_array arr;
    char *const *unused_envp = NULL;
    char **argv = COLLECT_ARGS(arr, arg, 0, unused_envp);
    (void)unused_envp;
    if (argv == NULL)
        return -1;
    SHIM_ENV_REPAIR(env, environ);
    coverage_check_path(VAR_EXECLP, AT_FDCWD, file, 1, env_plan.stripped);
    exec_before_path(VAR_EXECLP, file, argv);
    int ret = real_execvpe(file, argv, env);
    arg_array_put(&arr);
    return ret;
}

SHIM_EXPORT int execle(const char *path, const char *arg, ...)
{
    SHIM_REAL_OR_FAIL(execve, -1);
    struct arg_array arr;
    char *const *envp = NULL;
    char **argv = COLLECT_ARGS(arr, arg, 1, envp);
    if (argv == NULL)
        return -1;
    SHIM_ENV_REPAIR(env, envp);
    coverage_check_path(VAR_EXECLE, AT_FDCWD, path, 0, env_plan.stripped);
    exec_before_path(VAR_EXECLE, path, argv);
    int ret = real_execve(path, argv, env);
    arg_array_put(&arr);
    return ret;
}

/* ---- posix_spawn, posix_spawnp ---------------------------------------------------------------- */

static void spawn_after(unsigned variant, const char *path, char *const argv[], int ret,
                        pid_t child)
{
    if (shim_enter()) {
        struct exec_event e = {.variant = variant, .path = path,
                               .path_len = path ? strlen(path) : 0, .argv = argv,
                               .has_result = 1, .ret = ret, .err = ret,
                               .child = ret == 0 ? (int)child : 0};
        exec_report(&e, 0);
        shim_leave();
    }
}

SHIM_EXPORT int posix_spawn(pid_t *restrict pid, const char *restrict path,
                            const posix_spawn_file_actions_t *file_actions,
                            const posix_spawnattr_t *restrict attrp, char *const argv[restrict],
                            char *const envp[restrict])
{
    SHIM_NOTE_CALLER();
    if (!SHIM_RESOLVE(posix_spawn))
        return ENOSYS;
    pid_t local = 0;
    pid_t *out = pid ? pid : &local;
    SHIM_ENV_REPAIR(env, envp);
    coverage_check_path(VAR_POSIX_SPAWN, AT_FDCWD, path, 0, env_plan.stripped);
    int ret = real_posix_spawn(out, path, file_actions, attrp, argv, env);
    int err = errno;
    spawn_after(VAR_POSIX_SPAWN, path, argv, ret, *out);
    errno = err;
    return ret;
}

SHIM_EXPORT int posix_spawnp(pid_t *restrict pid, const char *restrict file,
                             const posix_spawn_file_actions_t *file_actions,
                             const posix_spawnattr_t *restrict attrp, char *const argv[restrict],
                             char *const envp[restrict])
{
    SHIM_NOTE_CALLER();
    if (!SHIM_RESOLVE(posix_spawnp))
        return ENOSYS;
    pid_t local = 0;
    pid_t *out = pid ? pid : &local;
    SHIM_ENV_REPAIR(env, envp);
    coverage_check_path(VAR_POSIX_SPAWNP, AT_FDCWD, file, 1, env_plan.stripped);
    int ret = real_posix_spawnp(out, file, file_actions, attrp, argv, env);
    int err = errno;
    spawn_after(VAR_POSIX_SPAWNP, file, argv, ret, *out);
    errno = err;
    return ret;
}

/* ---- system, popen (hooks_shell.c): what they run, as /bin/sh -c command ---------------------- */

void exec_report_shell(unsigned variant, const char *command)
{
    int saved = errno;
    if (shim_enter()) {
        char *argv[] = {"sh", "-c", (char *)command, NULL};
        struct exec_event e = {.variant = variant, .path = "/bin/sh", .path_len = 7, .argv = argv};
        exec_report(&e, 0);
        shim_leave();
    }
    errno = saved;
}
