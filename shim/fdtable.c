/* Socket types by descriptor number, so that a repeated network call learns the type of its socket
 * (part of the behaviour's identity) without a getsockopt(SO_TYPE) system call.
 *
 * One 32-bit word per descriptor below FDTAB_SIZE: the socket type in the low 8 bits (0: unknown)
 * and a version in the upper 24 bits that every change of the entry increments. Entries are set by
 * the hooks that create sockets (socket, socketpair, accept, accept4), and forgotten by every call
 * the shim sees that closes or replaces a descriptor: close, close_range, closefrom, fclose, the
 * target of dup2/dup3, and the descriptor returned by dup and fcntl(F_DUPFD*). A network hook that
 * finds no entry reads the type with getsockopt and stores it with a compare-and-swap on the
 * version it read first (fdtab_learn), so a close that ran meanwhile is never overwritten.
 *
 * Every operation is one atomic load or a compare-and-swap loop on one aligned word: lock-free,
 * allocation-free, safe from any thread and from a signal handler. The table is kept whether or
 * not the shim reports (it is cheap next to the system calls it follows), so it is consistent from
 * the very first call of the process; a fork child inherits both the descriptors and the table,
 * and an exec starts with an empty table. A vfork child shares its parent's table but not its
 * descriptors: what it closes or replaces only makes the parent's entries unknown (the parent pays
 * a getsockopt later); a socket it creates before exec (which POSIX leaves undefined) would give
 * the parent an entry for a number the parent may not hold, a stale entry like the ones below.
 *
 * An entry can be stale only when a descriptor is closed by means the shim does not see (a raw
 * system call, io_uring, libc's own internal closes) and its number is then reused by a socket the
 * shim did not see created (received with SCM_RIGHTS, a raw system call). The network hooks
 * therefore use a cached type only to key the dedup lookup; every first occurrence re-reads the
 * type with getsockopt before anything is reported, so a record never carries a wrong type. See
 * the README's known limits for what a stale entry can still do to repeat counts.
 */
#include "shim.h"

#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>

uint32_t shim_fdtab[FDTAB_SIZE];
static unsigned fdtab_high; /* one more than the highest descriptor ever given an entry; atomic */
static unsigned range_epoch; /* incremented by every close_range and closefrom scan; atomic */

enum { FDTAB_TYPE_MASK = 0xff, FDTAB_VERSION_ONE = 0x100 };

SHIM_REAL(close);
SHIM_REAL(close_range);
SHIM_REAL(closefrom);
SHIM_REAL(fclose);
SHIM_REAL(dup);
SHIM_REAL(dup2);
SHIM_REAL(dup3);
SHIM_REAL(fcntl);
SHIM_REAL(fcntl64);
SHIM_REAL(socketpair);

void hooks_fd_resolve(void)
{
    (void)SHIM_RESOLVE(close);
    (void)SHIM_RESOLVE(close_range);
    (void)SHIM_RESOLVE(closefrom);
    (void)SHIM_RESOLVE(fclose);
    (void)SHIM_RESOLVE(dup);
    (void)SHIM_RESOLVE(dup2);
    (void)SHIM_RESOLVE(dup3);
    (void)SHIM_RESOLVE(fcntl);
    (void)SHIM_RESOLVE(fcntl64);
    (void)SHIM_RESOLVE(socketpair);
}

static void raise_high(int fd)
{
    unsigned high = __atomic_load_n(&fdtab_high, __ATOMIC_SEQ_CST);
    while (high <= (unsigned)fd &&
           !__atomic_compare_exchange_n(&fdtab_high, &high, (unsigned)fd + 1, 1, __ATOMIC_SEQ_CST,
                                        __ATOMIC_SEQ_CST))
        ;
}

/* Replaces the entry of fd by `type` (0: unknown) with a new version. */
static void fdtab_put(int fd, int type)
{
    if (fd < 0 || fd >= FDTAB_SIZE)
        return;
    uint32_t *e = &shim_fdtab[fd];
    uint32_t old = __atomic_load_n(e, __ATOMIC_RELAXED);
    uint32_t val;
    do {
        val = ((old & ~(uint32_t)FDTAB_TYPE_MASK) + FDTAB_VERSION_ONE) |
              ((uint32_t)type & FDTAB_TYPE_MASK);
    } while (!__atomic_compare_exchange_n(e, &old, val, 1, __ATOMIC_RELEASE, __ATOMIC_RELAXED));
    if (type != 0)
        raise_high(fd);
}

void fdtab_set(int fd, int type)
{
    fdtab_put(fd, type > 0 && type <= FDTAB_TYPE_MASK ? type : 0);
}

void fdtab_forget(int fd)
{
    fdtab_put(fd, 0);
}

unsigned fdtab_epoch(void)
{
    return __atomic_load_n(&range_epoch, __ATOMIC_SEQ_CST);
}

/* Forgets the entries first..last (inclusive), once the descriptors are closed. Only entries below
 * the high-water mark can hold a type, so a close_range(3, ~0U) costs what the process actually
 * used. Entries found unknown are left alone, so a type that another thread learned before the
 * close but stores after this scan would survive it: the epoch, incremented before the scan, makes
 * that thread forget it (fdtab_learn). */
static void fdtab_forget_range(unsigned first, unsigned last)
{
    __atomic_fetch_add(&range_epoch, 1, __ATOMIC_SEQ_CST);
    unsigned high = __atomic_load_n(&fdtab_high, __ATOMIC_SEQ_CST);
    if (high == 0)
        return;
    if (last >= high)
        last = high - 1;
    for (unsigned fd = first; fd <= last; fd++)
        if (__atomic_load_n(&shim_fdtab[fd], __ATOMIC_SEQ_CST) & FDTAB_TYPE_MASK)
            fdtab_put((int)fd, 0);
}

void fdtab_learn(int fd, uint32_t seen, unsigned epoch, int type)
{
    if (fd < 0 || fd >= FDTAB_SIZE)
        return;
    if (type <= 0 || type > FDTAB_TYPE_MASK) { /* not a socket (or gone): nothing to keep */
        fdtab_forget(fd);
        return;
    }
    uint32_t val = (seen & ~(uint32_t)FDTAB_TYPE_MASK) | (uint32_t)type;
    if (!__atomic_compare_exchange_n(&shim_fdtab[fd], &seen, val, 0, __ATOMIC_SEQ_CST,
                                     __ATOMIC_RELAXED))
        return; /* a close or a new socket since `seen`: it wins */
    raise_high(fd);
    /* A close_range or closefrom scan that started after `epoch` was read may have passed fd before
     * this store: the type may belong to a descriptor it closed. A scan that starts later sees
     * the type (and the raised high-water mark) and forgets it itself. */
    if (__atomic_load_n(&range_epoch, __ATOMIC_SEQ_CST) != epoch)
        fdtab_forget(fd);
}

/* ---- hooks: every call that closes or replaces a descriptor ------------------------------------
 *
 * close and fclose are cancellation points, and Linux releases the descriptor even when the call is
 * interrupted: the entry is forgotten before the call (a cancelled thread never comes back to it)
 * and again after it (a type learned by another thread in between is dropped). */

SHIM_EXPORT int close(int fd)
{
    SHIM_REAL_OR_FAIL(close, -1);
    fdtab_forget(fd);
    int ret = real_close(fd);
    int err = errno;
    fdtab_forget(fd);
    errno = err;
    return ret;
}

SHIM_EXPORT int fclose(FILE *fp)
{
    SHIM_REAL_OR_FAIL(fclose, EOF);
    int fd = -1;
    if (fp != NULL) {
        int saved = errno;
        fd = fileno(fp); /* -1 for a stream without a descriptor (fmemopen, fopencookie) */
        errno = saved;
    }
    fdtab_forget(fd);
    int ret = real_fclose(fp);
    int err = errno;
    fdtab_forget(fd);
    errno = err;
    return ret;
}

SHIM_EXPORT int close_range(unsigned int first, unsigned int last, int flags)
{
    SHIM_REAL_OR_FAIL(close_range, -1);
    int ret = real_close_range(first, last, flags);
    int err = errno;
    if (ret == 0 && !((unsigned)flags & CLOSE_RANGE_CLOEXEC))
        fdtab_forget_range(first, last);
    errno = err;
    return ret;
}

SHIM_EXPORT void closefrom(int lowfd)
{
    if (SHIM_UNLIKELY(!SHIM_RESOLVE(closefrom)))
        return;
    int saved = errno;
    real_closefrom(lowfd);
    if (lowfd >= 0)
        fdtab_forget_range((unsigned)lowfd, ~0u);
    errno = saved;
}

SHIM_EXPORT int dup(int fd)
{
    SHIM_REAL_OR_FAIL(dup, -1);
    int ret = real_dup(fd);
    int err = errno;
    fdtab_forget(ret);
    errno = err;
    return ret;
}

SHIM_EXPORT int dup2(int fd, int target)
{
    SHIM_REAL_OR_FAIL(dup2, -1);
    int ret = real_dup2(fd, target);
    int err = errno;
    if (ret >= 0 && fd != target)
        fdtab_forget(target);
    errno = err;
    return ret;
}

SHIM_EXPORT int dup3(int fd, int target, int flags)
{
    SHIM_REAL_OR_FAIL(dup3, -1);
    int ret = real_dup3(fd, target, flags);
    int err = errno;
    if (ret >= 0)
        fdtab_forget(target);
    errno = err;
    return ret;
}

/* fcntl's third argument is an int or a pointer depending on the command; like libc's own wrapper,
 * it is taken and passed on as a pointer-sized value. */
#define FCNTL_HOOK(name)                                                                     \
    SHIM_EXPORT int name(int fd, int cmd, ...)                                               \
    {                                                                                        \
        va_list ap;                                                                          \
        va_start(ap, cmd);                                                                   \
        void *arg = va_arg(ap, void *);                                                      \
        va_end(ap);                                                                          \
        SHIM_REAL_OR_FAIL(name, -1);                                                         \
        int ret = real_##name(fd, cmd, arg);                                                 \
        if ((cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC) && ret >= 0) {                        \
            int err = errno;                                                                 \
            fdtab_forget(ret);                                                               \
            errno = err;                                                                     \
        }                                                                                    \
        return ret;                                                                          \
    }

FCNTL_HOOK(fcntl)
FCNTL_HOOK(fcntl64)

SHIM_EXPORT int socketpair(int domain, int type, int protocol, int sv[2])
{
    SHIM_REAL_OR_FAIL(socketpair, -1);
    int ret = real_socketpair(domain, type, protocol, sv);
    int err = errno;
    if (ret == 0) {
        int base = type & ~(SOCK_NONBLOCK | SOCK_CLOEXEC);
        fdtab_set(sv[0], base);
        fdtab_set(sv[1], base);
    }
    errno = err;
    return ret;
}
