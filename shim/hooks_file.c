/* File hooks: opens of sensitive paths (open, open64, openat, openat64, creat, fopen, fopen64,
 * freopen, freopen64) and changes to files (chmod, fchmodat, rename, renameat, unlink, unlinkat).
 *
 * Each calls the real function first, then reports with the call's RESULT:
 *   FILE_OPEN    PATH (absolute), FILE_FLAGS (O_* flags; for fopen, those its mode string
 *                stands for), FILE_MODE (only when the call creates), FUNCTION.
 *                Identity: path and whether the open writes.
 *   FILE_CHANGE  CHANGE, PATH, NEW_PATH (rename), FILE_MODE (chmod).
 *                Identity: change, paths and mode.
 *
 * Only paths a policy can care about are reported (path_sensitive below): the check is a few
 * prefix compares and comes before anything else is done. A relative path is made absolute
 * against the current directory (getcwd) or the directory descriptor (readlink of
 * /proc/self/fd/N); "." and ".." components are not resolved. chmod and fchmodat are reported
 * whatever the path when the new mode has setuid, setgid or world-write.
 *
 * The shim's own opens (such as /proc/self/cmdline) run with the guard held, so they call
 * straight through; libc's internal opens do not go through these hooks at all.
 */
#undef _FORTIFY_SOURCE /* this file defines open and openat itself */
#include "shim.h"

#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/stat.h>

SHIM_REAL(open);
SHIM_REAL(open64);
SHIM_REAL(openat);
SHIM_REAL(openat64);
SHIM_REAL(creat);
SHIM_REAL(fopen);
SHIM_REAL(fopen64);
SHIM_REAL(freopen);
SHIM_REAL(freopen64);
SHIM_REAL(chmod);
SHIM_REAL(fchmodat);
SHIM_REAL(rename);
SHIM_REAL(renameat);
SHIM_REAL(unlink);
SHIM_REAL(unlinkat);

void hooks_file_resolve(void)
{
    (void)SHIM_RESOLVE(open);
    (void)SHIM_RESOLVE(open64);
    (void)SHIM_RESOLVE(openat);
    (void)SHIM_RESOLVE(openat64);
    (void)SHIM_RESOLVE(creat);
    (void)SHIM_RESOLVE(fopen);
    (void)SHIM_RESOLVE(fopen64);
    (void)SHIM_RESOLVE(freopen);
    (void)SHIM_RESOLVE(freopen64);
    (void)SHIM_RESOLVE(chmod);
    (void)SHIM_RESOLVE(fchmodat);
    (void)SHIM_RESOLVE(rename);
    (void)SHIM_RESOLVE(renameat);
    (void)SHIM_RESOLVE(unlink);
    (void)SHIM_RESOLVE(unlinkat);
}

enum { FUNCTION_MAX_FIELD = 16 };

/* ---- which paths ------------------------------------------------------------------------------ */

#define HAS_PREFIX(p, n, lit) ((n) >= sizeof(lit) - 1 && memcmp((p), (lit), sizeof(lit) - 1) == 0)
#define IS_EXACTLY(p, n, lit) ((n) == sizeof(lit) - 1 && memcmp((p), (lit), sizeof(lit) - 1) == 0)

/* Under /home/: only credential and key directories. */
static int home_secret(const char *p, size_t n)
{
    static const char *const dirs[] = {"/.ssh/", "/.aws/", "/.config/gcloud/", "/.kube/",
                                       "/.docker/", "/.gnupg/"};
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++)
        if (memmem(p, n, dirs[i], strlen(dirs[i])) != NULL)
            return 1;
    return 0;
}

/* 1 when the absolute path p (n bytes) is one a policy can care about. Program directories
 * (/bin, /sbin, /usr/bin, /usr/sbin) count only for writes. */
static int path_sensitive(const char *p, size_t n, int write)
{
    if (n < 5 || p[0] != '/')
        return 0;
    switch (p[1]) {
    case 'e':
        return HAS_PREFIX(p, n, "/etc/");
    case 'r':
        return HAS_PREFIX(p, n, "/root/");
    case 'h':
        return HAS_PREFIX(p, n, "/home/") && home_secret(p + 5, n - 5);
    case 'v':
        return HAS_PREFIX(p, n, "/var/log/");
    case 'b':
        return HAS_PREFIX(p, n, "/boot/") || (write && HAS_PREFIX(p, n, "/bin/"));
    case 's':
        return write && HAS_PREFIX(p, n, "/sbin/");
    case 'u':
        return write && (HAS_PREFIX(p, n, "/usr/bin/") || HAS_PREFIX(p, n, "/usr/sbin/"));
    case 'd':
        return IS_EXACTLY(p, n, "/dev/mem") || IS_EXACTLY(p, n, "/dev/kmem");
    case 'p': { /* /proc/<one component>/mem */
        if (!HAS_PREFIX(p, n, "/proc/") || n < 11 || memcmp(p + n - 4, "/mem", 4) != 0)
            return 0;
        const char *slash = memchr(p + 6, '/', n - 6);
        return slash == p + n - 4 && slash > p + 6;
    }
    default:
        return 0;
    }
}

/* The absolute form of `path`, relative to dirfd (AT_FDCWD: the current directory): `path`
 * itself when absolute, else built in buf (cap bytes). NULL when the base is unknown or the
 * result does not fit. */
static const char *absolute(int dirfd, const char *path, char *buf, size_t cap, size_t *len)
{
    size_t plen = strlen(path);
    if (path[0] == '/') {
        *len = plen;
        return path;
    }
    size_t base;
    if (dirfd == AT_FDCWD) {
        if (getcwd(buf, cap) == NULL)
            return NULL;
        base = strlen(buf);
    } else {
        char link[FD_LINK_SIZE];
        if (dirfd < 0)
            return NULL;
        shim_fd_link(dirfd, link);
        ssize_t n = readlink(link, buf, cap);
        if (n <= 0 || (size_t)n >= cap || buf[0] != '/')
            return NULL;
        base = (size_t)n;
    }
    while (path[0] == '.' && path[1] == '/') {
        path += 2;
        plen -= 2;
    }
    if (base > 0 && buf[base - 1] == '/')
        base--;
    if (base + 1 + plen >= cap)
        return NULL;
    buf[base] = '/';
    memcpy(buf + base + 1, path, plen + 1);
    *len = base + 1 + plen;
    return buf;
}

/* ---- reporting -------------------------------------------------------------------------------- */

struct file_call {
    unsigned kind;
    int32_t ret, err;
    const char *path; /* absolute */
    size_t path_len;
    /* FILE_OPEN */
    int32_t flags;
    int has_mode;
    uint32_t mode;
    int write;
    const char *function;
    /* FILE_CHANGE */
    uint8_t change;
    const char *new_path; /* NULL: no NEW_PATH */
    size_t new_len;
};

static uint64_t file_key(const struct file_call *c)
{
    uint64_t h = (uint64_t)c->kind << 32;
    h = hash_mem(h, c->path, c->path_len);
    if (c->kind == KIND_FILE_OPEN) {
        h = hash_mem(h, &c->write, sizeof c->write);
    } else {
        h = hash_mem(h, &c->change, sizeof c->change);
        h = hash_mem(h, c->new_path ? c->new_path : "", c->new_path ? c->new_len : 0);
        h = hash_mem(h, &c->mode, sizeof c->mode);
    }
    return hash_final(h);
}

static void file_report(const struct file_call *c)
{
    int cancel, pid, foreign, slot = -1;
    unsigned flags = 0;
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel);
    if (!dedup_first(file_key(c), 1, &pid, &foreign, &slot, &flags))
        goto out;

    uint8_t buf[REC_HEADER_SIZE + 12 + 8 + 8 + 5 + 4 + FUNCTION_MAX_FIELD +
                2 * (4 + PATH_FIELD_MAX) + CALLER_FIELD];
    struct rec r;
    rec_begin(&r, buf, sizeof buf, c->kind, pid);
    rec_add_flags(&r, flags);
    int32_t result[2] = {c->ret, c->ret < 0 ? c->err : 0};
    rec_put(&r, TAG_RESULT, result, sizeof result);
    if (c->kind == KIND_FILE_OPEN) {
        rec_put_i32(&r, TAG_FILE_FLAGS, c->flags);
        if (c->has_mode)
            rec_put_u32(&r, TAG_FILE_MODE, c->mode);
        rec_put_bytes(&r, TAG_FUNCTION, c->function, strlen(c->function), FUNCTION_MAX_FIELD);
        rec_put_bytes(&r, TAG_PATH, c->path, c->path_len, PATH_FIELD_MAX);
    } else {
        rec_put_u8(&r, TAG_CHANGE, c->change);
        if (c->has_mode)
            rec_put_u32(&r, TAG_FILE_MODE, c->mode);
        rec_put_bytes(&r, TAG_PATH, c->path, c->path_len, PATH_FIELD_MAX);
        if (c->new_path != NULL)
            rec_put_bytes(&r, TAG_NEW_PATH, c->new_path, c->new_len, PATH_FIELD_MAX);
    }

    report_first(buf, r.len, foreign, slot);
out:
    pthread_setcancelstate(cancel, NULL);
}

/* ---- opens ------------------------------------------------------------------------------------ */

static int opens_for_write(int flags)
{
    return (flags & O_ACCMODE) != O_RDONLY || (flags & (O_CREAT | O_TRUNC | O_APPEND)) != 0;
}

static int needs_mode(int flags)
{
    return (flags & O_CREAT) != 0 || (flags & O_TMPFILE) == O_TMPFILE;
}

/* Called with the guard held. Large buffers live only in this frame. */
static __attribute__((noinline)) void open_check(const char *function, int dirfd,
                                                 const char *path, int flags, unsigned mode,
                                                 int ret, int err)
{
    char buf[PATH_MAX];
    size_t len;
    const char *abs = absolute(dirfd, path, buf, sizeof buf, &len);
    int write = opens_for_write(flags);
    if (abs == NULL || !path_sensitive(abs, len, write))
        return;
    struct file_call c = {.kind = KIND_FILE_OPEN, .ret = ret, .err = err, .path = abs,
                          .path_len = len, .flags = flags, .has_mode = needs_mode(flags),
                          .mode = mode, .write = write, .function = function};
    file_report(&c);
}

static void open_event(const char *function, int dirfd, const char *path, int flags,
                       unsigned mode, int ret, int err)
{
    /* A path the kernel could not read is not read here either. */
    if (path == NULL || (ret < 0 && err == EFAULT))
        return;
    if (path[0] == '/' && !path_sensitive(path, strlen(path), opens_for_write(flags)))
        return; /* the common case: no guard, no buffers */
    if (shim_enter()) {
        open_check(function, dirfd, path, flags, mode, ret, err);
        shim_leave();
    }
}

#define MODE_ARG(flags, mode)                                                                \
    do {                                                                                     \
        if (needs_mode(flags)) {                                                             \
            va_list ap;                                                                      \
            va_start(ap, flags);                                                             \
            mode = va_arg(ap, unsigned);                                                     \
            va_end(ap);                                                                      \
        }                                                                                    \
    } while (0)

SHIM_EXPORT int open(const char *path, int flags, ...)
{
    unsigned mode = 0;
    MODE_ARG(flags, mode);
    SHIM_REAL_OR_FAIL(open, -1);
    int ret = real_open(path, flags, mode);
    int err = errno;
    open_event("open", AT_FDCWD, path, flags, mode, ret, err);
    errno = err;
    return ret;
}

SHIM_EXPORT int open64(const char *path, int flags, ...)
{
    unsigned mode = 0;
    MODE_ARG(flags, mode);
    SHIM_REAL_OR_FAIL(open64, -1);
    int ret = real_open64(path, flags, mode);
    int err = errno;
    open_event("open64", AT_FDCWD, path, flags, mode, ret, err);
    errno = err;
    return ret;
}

SHIM_EXPORT int openat(int dirfd, const char *path, int flags, ...)
{
    unsigned mode = 0;
    MODE_ARG(flags, mode);
    SHIM_REAL_OR_FAIL(openat, -1);
    int ret = real_openat(dirfd, path, flags, mode);
    int err = errno;
    open_event("openat", dirfd, path, flags, mode, ret, err);
    errno = err;
    return ret;
}

SHIM_EXPORT int openat64(int dirfd, const char *path, int flags, ...)
{
    unsigned mode = 0;
    MODE_ARG(flags, mode);
    SHIM_REAL_OR_FAIL(openat64, -1);
    int ret = real_openat64(dirfd, path, flags, mode);
    int err = errno;
    open_event("openat64", dirfd, path, flags, mode, ret, err);
    errno = err;
    return ret;
}

SHIM_EXPORT int creat(const char *path, mode_t mode)
{
    SHIM_REAL_OR_FAIL(creat, -1);
    int ret = real_creat(path, mode);
    int err = errno;
    open_event("creat", AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, mode, ret, err);
    errno = err;
    return ret;
}

/* The open flags a fopen mode string stands for (as glibc reads it); -1 when invalid. */
static int fopen_flags(const char *mode)
{
    int acc, extra;
    switch (mode[0]) {
    case 'r':
        acc = O_RDONLY;
        extra = 0;
        break;
    case 'w':
        acc = O_WRONLY;
        extra = O_CREAT | O_TRUNC;
        break;
    case 'a':
        acc = O_WRONLY;
        extra = O_CREAT | O_APPEND;
        break;
    default:
        return -1;
    }
    for (int i = 1; i < 7 && mode[i] != '\0' && mode[i] != ','; i++) {
        if (mode[i] == '+')
            acc = O_RDWR;
        else if (mode[i] == 'x')
            extra |= O_EXCL;
        else if (mode[i] == 'e')
            extra |= O_CLOEXEC;
    }
    return acc | extra;
}

static void fopen_event(const char *function, const char *path, const char *mode, FILE *f,
                        int err)
{
    if (mode == NULL)
        return;
    int flags = fopen_flags(mode);
    if (flags < 0)
        return; /* nothing was opened */
    open_event(function, AT_FDCWD, path, flags, 0666, f != NULL ? fileno(f) : -1, err);
}

SHIM_EXPORT FILE *fopen(const char *path, const char *mode)
{
    SHIM_REAL_OR_FAIL(fopen, NULL);
    FILE *f = real_fopen(path, mode);
    int err = errno;
    fopen_event("fopen", path, mode, f, err);
    errno = err;
    return f;
}

SHIM_EXPORT FILE *fopen64(const char *path, const char *mode)
{
    SHIM_REAL_OR_FAIL(fopen64, NULL);
    FILE *f = real_fopen64(path, mode);
    int err = errno;
    fopen_event("fopen64", path, mode, f, err);
    errno = err;
    return f;
}

/* freopen, freopen64: reported like fopen when given a path (a NULL path only changes the mode of
 * the stream's file, which is not reported). */
SHIM_EXPORT FILE *freopen(const char *path, const char *mode, FILE *stream)
{
    SHIM_REAL_OR_FAIL(freopen, NULL);
    FILE *f = real_freopen(path, mode, stream);
    int err = errno;
    fopen_event("freopen", path, mode, f, err);
    errno = err;
    return f;
}

SHIM_EXPORT FILE *freopen64(const char *path, const char *mode, FILE *stream)
{
    SHIM_REAL_OR_FAIL(freopen64, NULL);
    FILE *f = real_freopen64(path, mode, stream);
    int err = errno;
    fopen_event("freopen64", path, mode, f, err);
    errno = err;
    return f;
}

/* ---- changes ---------------------------------------------------------------------------------- */

static int mode_risky(mode_t mode)
{
    return (mode & (S_ISUID | S_ISGID | S_IWOTH)) != 0;
}

/* Called with the guard held. A path that cannot be made absolute is reported as given. */
static __attribute__((noinline)) void change_check(uint8_t change, int dirfd, const char *path,
                                                   int newdirfd, const char *new_path,
                                                   mode_t mode, int ret, int err)
{
    char buf[PATH_MAX], nbuf[PATH_MAX];
    size_t len = 0, nlen = 0;
    const char *abs = absolute(dirfd, path, buf, sizeof buf, &len);
    if (abs == NULL) {
        abs = path;
        len = strlen(path);
    }
    const char *nabs = NULL;
    if (new_path != NULL) {
        nabs = absolute(newdirfd, new_path, nbuf, sizeof nbuf, &nlen);
        if (nabs == NULL) {
            nabs = new_path;
            nlen = strlen(new_path);
        }
    }
    if (change != CHANGE_CHMOD && !path_sensitive(abs, len, 1) &&
        !(nabs != NULL && path_sensitive(nabs, nlen, 1)))
        return;
    struct file_call c = {.kind = KIND_FILE_CHANGE, .ret = ret, .err = err, .path = abs,
                          .path_len = len, .has_mode = change == CHANGE_CHMOD,
                          .mode = change == CHANGE_CHMOD ? (uint32_t)mode : 0, .write = 1,
                          .change = change, .new_path = nabs, .new_len = nlen};
    file_report(&c);
}

static void change_event(uint8_t change, int dirfd, const char *path, int newdirfd,
                         const char *new_path, mode_t mode, int ret, int err)
{
    if (path == NULL || (ret < 0 && err == EFAULT))
        return;
    if (change == CHANGE_RENAME && new_path == NULL)
        return;
    if (change == CHANGE_CHMOD && !mode_risky(mode))
        return;
    if (shim_enter()) {
        change_check(change, dirfd, path, newdirfd, new_path, mode, ret, err);
        shim_leave();
    }
}

SHIM_EXPORT int chmod(const char *path, mode_t mode)
{
    SHIM_REAL_OR_FAIL(chmod, -1);
    int ret = real_chmod(path, mode);
    int err = errno;
    change_event(CHANGE_CHMOD, AT_FDCWD, path, AT_FDCWD, NULL, mode, ret, err);
    errno = err;
    return ret;
}

SHIM_EXPORT int fchmodat(int dirfd, const char *path, mode_t mode, int flags)
{
    SHIM_REAL_OR_FAIL(fchmodat, -1);
    int ret = real_fchmodat(dirfd, path, mode, flags);
    int err = errno;
    change_event(CHANGE_CHMOD, dirfd, path, AT_FDCWD, NULL, mode, ret, err);
    errno = err;
    return ret;
}

SHIM_EXPORT int rename(const char *old_path, const char *new_path)
{
    SHIM_REAL_OR_FAIL(rename, -1);
    int ret = real_rename(old_path, new_path);
    int err = errno;
    change_event(CHANGE_RENAME, AT_FDCWD, old_path, AT_FDCWD, new_path, 0, ret, err);
    errno = err;
    return ret;
}

SHIM_EXPORT int renameat(int olddirfd, const char *old_path, int newdirfd, const char *new_path)
{
    SHIM_REAL_OR_FAIL(renameat, -1);
    int ret = real_renameat(olddirfd, old_path, newdirfd, new_path);
    int err = errno;
    change_event(CHANGE_RENAME, olddirfd, old_path, newdirfd, new_path, 0, ret, err);
    errno = err;
    return ret;
}

SHIM_EXPORT int unlink(const char *path)
{
    SHIM_REAL_OR_FAIL(unlink, -1);
    int ret = real_unlink(path);
    int err = errno;
    change_event(CHANGE_UNLINK, AT_FDCWD, path, AT_FDCWD, NULL, 0, ret, err);
    errno = err;
    return ret;
}

SHIM_EXPORT int unlinkat(int dirfd, const char *path, int flags)
{
    SHIM_REAL_OR_FAIL(unlinkat, -1);
    int ret = real_unlinkat(dirfd, path, flags);
    int err = errno;
    change_event(CHANGE_UNLINK, dirfd, path, AT_FDCWD, NULL, 0, ret, err);
    errno = err;
    return ret;
}
