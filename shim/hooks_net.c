/* Network hooks: connect, bind, listen.
 *
 * Each calls the real function first, then reports: RESULT, SOCKINFO and SOCKADDR (the address
 * the program passed; for listen, the local address from getsockname, which carries the port the
 * kernel chose). Identity for dedup: kind + socket type + address bytes.
 *
 * Cost on a repeat: one getsockopt(SO_TYPE) system call, a hash and an atomic increment.
 */
#include "shim.h"

#include <pthread.h>

SHIM_REAL(connect);
SHIM_REAL(bind);
SHIM_REAL(listen);

void hooks_net_resolve(void)
{
    (void)SHIM_RESOLVE(connect);
    (void)SHIM_RESOLVE(bind);
    (void)SHIM_RESOLVE(listen);
}

/* How many bytes of the program's address we may read: none if the kernel could not read them
 * (EFAULT), may not have tried (a bad descriptor is reported before the address is copied), or
 * refused the length (larger than sockaddr_storage). */
static size_t readable_len(const struct sockaddr *addr, socklen_t len, int ret, int err)
{
    if (addr == NULL || len < sizeof(sa_family_t) || len > sizeof(struct sockaddr_storage))
        return 0;
    if (ret != 0 && (err == EFAULT || err == EBADF || err == ENOTSOCK))
        return 0;
    return len;
}

static int sockopt_int(int fd, int opt)
{
    int v = -1;
    socklen_t len = sizeof v;
    if (getsockopt(fd, SOL_SOCKET, opt, &v, &len) != 0)
        return -1;
    return v;
}

/* First occurrence (or dedup unavailable): build, send, and store the record. */
static __attribute__((noinline)) void net_first(unsigned kind, uint64_t key, int fd, int type,
                                                const void *addr, size_t alen, int ret, int err,
                                                int backlog)
{
    int cancel, pid, slot = -1;
    unsigned flags = 0;
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel);
    int foreign = shim_foreign_process(&pid);
    if (foreign) {
        flags = FLAG_NODEDUP;
    } else {
        int claim = dedup_claim(key, &slot);
        if (claim == DEDUP_HIT)
            goto out;
        if (claim == DEDUP_FULL)
            flags = FLAG_NODEDUP;
    }

    uint8_t buf[REC_HEADER_SIZE + 4 + sizeof(struct sockaddr_storage) + 64];
    struct rec r;
    rec_begin(&r, buf, sizeof buf, kind, pid);
    rec_add_flags(&r, flags);
    int32_t result[2] = {ret, ret < 0 ? err : 0};
    rec_put(&r, TAG_RESULT, result, sizeof result);
    int32_t info[3] = {sockopt_int(fd, SO_DOMAIN), type, sockopt_int(fd, SO_PROTOCOL)};
    rec_put(&r, TAG_SOCKINFO, info, sizeof info);
    if (kind == KIND_LISTEN)
        rec_put_i32(&r, TAG_BACKLOG, backlog);
    if (alen)
        rec_put(&r, TAG_SOCKADDR, addr, alen);

    if (foreign) {
        report_send_detached(buf, r.len);
    } else {
        shim_before_record();
        report_send(buf, r.len);
        if (slot >= 0)
            dedup_store(slot, buf, r.len);
    }
out:
    pthread_setcancelstate(cancel, NULL);
}

static void net_event(unsigned kind, int fd, const void *addr, size_t alen, int ret, int err,
                      int backlog)
{
    int type = sockopt_int(fd, SO_TYPE);
    uint64_t key = ((uint64_t)kind << 32) | (uint32_t)type;
    key = hash_final(hash_mem(key, alen ? addr : "", alen));
    dedup_tick();
    if (SHIM_LIKELY(dedup_hit(key)))
        return;
    net_first(kind, key, fd, type, addr, alen, ret, err, backlog);
}

SHIM_EXPORT int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
    SHIM_REAL_OR_FAIL(connect, -1);
    int ret = real_connect(fd, addr, len);
    int err = errno;
    if (shim_enter()) {
        net_event(KIND_CONNECT, fd, addr, readable_len(addr, len, ret, err), ret, err, 0);
        shim_leave();
    }
    errno = err;
    return ret;
}

SHIM_EXPORT int bind(int fd, const struct sockaddr *addr, socklen_t len)
{
    SHIM_REAL_OR_FAIL(bind, -1);
    int ret = real_bind(fd, addr, len);
    int err = errno;
    if (shim_enter()) {
        net_event(KIND_BIND, fd, addr, readable_len(addr, len, ret, err), ret, err, 0);
        shim_leave();
    }
    errno = err;
    return ret;
}

SHIM_EXPORT int listen(int fd, int backlog)
{
    SHIM_REAL_OR_FAIL(listen, -1);
    int ret = real_listen(fd, backlog);
    int err = errno;
    if (shim_enter()) {
        struct sockaddr_storage local;
        socklen_t llen = sizeof local;
        size_t alen = 0;
        if (getsockname(fd, (struct sockaddr *)&local, &llen) == 0)
            alen = llen > sizeof local ? sizeof local : llen;
        net_event(KIND_LISTEN, fd, &local, alen, ret, err, backlog);
        shim_leave();
    }
    errno = err;
    return ret;
}
