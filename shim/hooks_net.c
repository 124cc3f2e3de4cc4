/* Network hooks: connect, bind, listen, socket, accept, accept4, sendto, sendmsg (name
 * resolution is in hooks_resolve.c).
 *
 * Each calls the real function first, then reports. connect, bind and listen send RESULT, SOCKINFO
 * and SOCKADDR (the address the program passed; for listen, the local address from getsockname,
 * which carries the port the kernel chose); identity for dedup: kind + socket type + address bytes.
 * The others are described at their hooks.
 *
 * The socket type comes from the descriptor table (fdtable.c) when it knows the descriptor, else
 * from getsockopt(SO_TYPE), which is then stored there. A cached type only keys the dedup lookup:
 * before a first occurrence is reported its type is read again with getsockopt (verify_type).
 *
 * Cost on a repeat of connect, bind or a datagram send: a table load, a hash and an atomic
 * increment, no system call. accept adds getpeername, listen getsockname.
 */
#include "shim.h"

#include <netinet/in.h>
#include <pthread.h>

SHIM_REAL(connect);
SHIM_REAL(bind);
SHIM_REAL(listen);
SHIM_REAL(socket);
SHIM_REAL(accept);
SHIM_REAL(accept4);
SHIM_REAL(sendto);
SHIM_REAL(sendmsg);

void hooks_net_resolve(void)
{
    (void)SHIM_RESOLVE(connect);
    (void)SHIM_RESOLVE(bind);
    (void)SHIM_RESOLVE(listen);
    (void)SHIM_RESOLVE(socket);
    (void)SHIM_RESOLVE(accept);
    (void)SHIM_RESOLVE(accept4);
    (void)SHIM_RESOLVE(sendto);
    (void)SHIM_RESOLVE(sendmsg);
    hooks_fd_resolve();
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

/* One observed network call. Fields left at 0/NULL are not sent. */
struct net_call {
    unsigned kind;
    int fd;             /* socket to read SOCKINFO from, unless info_given */
    int info_given;     /* SOCKINFO is `info` */
    int32_t info[3];
    int type;           /* socket type for the identity */
    int cached;         /* `type` came from the descriptor table: verify before reporting */
    int dgram_only;     /* report only if the socket is a datagram socket */
    const void *addr;   /* SOCKADDR bytes */
    size_t alen;
    int has_result;
    int ret, err;
    int has_backlog;
    int backlog;
};

/* Claims a dedup slot for `key` unless the caller is a foreign process (then *flags gets NODEDUP).
 * Returns 0 when another thread already stored this behaviour (nothing to send). */
static int first_claim(uint64_t key, int *pid, int *slot, unsigned *flags, int *foreign)
{
    *slot = -1;
    *flags = 0;
    *foreign = shim_foreign_process(pid);
    if (*foreign) {
        *flags = FLAG_NODEDUP;
        return 1;
    }
    int claim = dedup_claim(key, slot);
    if (claim == DEDUP_HIT)
        return 0;
    if (claim == DEDUP_FULL)
        *flags = FLAG_NODEDUP;
    return 1;
}

/* First occurrence (or dedup unavailable): build, send, and store the record. */
static __attribute__((noinline)) void net_first(const struct net_call *c, uint64_t key)
{
    int cancel, pid, slot, foreign;
    unsigned flags;
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel);
    if (first_claim(key, &pid, &slot, &flags, &foreign)) {
        uint8_t buf[REC_HEADER_SIZE + 4 + sizeof(struct sockaddr_storage) + 64 + CALLER_FIELD];
        struct rec r;
        rec_begin(&r, buf, sizeof buf, c->kind, pid);
        rec_add_flags(&r, flags);
        if (c->has_result) {
            int32_t result[2] = {c->ret, c->ret < 0 ? c->err : 0};
            rec_put(&r, TAG_RESULT, result, sizeof result);
        }
        if (!c->info_given) {
            int32_t info[3] = {sockopt_int(c->fd, SO_DOMAIN), c->type,
                               sockopt_int(c->fd, SO_PROTOCOL)};
            rec_put(&r, TAG_SOCKINFO, info, sizeof info);
        } else {
            rec_put(&r, TAG_SOCKINFO, c->info, sizeof c->info);
        }
        if (c->has_backlog)
            rec_put_i32(&r, TAG_BACKLOG, c->backlog);
        if (c->alen)
            rec_put(&r, TAG_SOCKADDR, c->addr, c->alen);
        report_first(buf, r.len, foreign, slot);
    }
    pthread_setcancelstate(cancel, NULL);
}

/* The identity of a network behaviour: kind, socket type, then `id` bytes. A 16-byte id (an IPv4
 * address, or AF_UNSPEC) is the common case of a repeat: its two words are multiplied in parallel
 * rather than one after the other, a shorter dependency chain on the hit path; other lengths use
 * hash_mem. Either way the result goes through hash_final, a bijection. */
typedef uint64_t unaligned_u64 __attribute__((may_alias, aligned(1)));

static __attribute__((noinline)) uint64_t net_key_bytes(uint64_t head, const void *id, size_t idlen)
{
    return hash_final(hash_mem(head, idlen ? id : "", idlen));
}

static inline uint64_t net_key(unsigned kind, int type, const void *id, size_t idlen)
{
    uint64_t head = ((uint64_t)kind << 32) | (uint32_t)type;
    if (SHIM_LIKELY(idlen == 16)) {
        uint64_t w0 = ((const unaligned_u64 *)id)[0];
        uint64_t w1 = ((const unaligned_u64 *)id)[1];
        uint64_t h = (head * HASH_MUL) ^ (w0 * 0xD6E8FEB86659FD93ULL) ^
                     ((w1 * 0xA0761D6478BD642FULL) >> 7 | (w1 * 0xA0761D6478BD642FULL) << 57);
        return hash_final(h);
    }
    return net_key_bytes(head, id, idlen);
}

/* The socket type of fd from the kernel (getsockopt), stored in the table unless the entry changed
 * since it was `seen`. */
static __attribute__((noinline)) int learn_type(int fd, uint32_t seen)
{
    unsigned epoch = fdtab_epoch();
    int type = sockopt_int(fd, SO_TYPE);
    fdtab_learn(fd, seen, epoch, type);
    return type;
}

/* 1 when the table's entry `seen` may key a dedup lookup: it knows a type, and the call did not
 * just say that its descriptor is no socket. */
static inline int usable_entry(uint32_t seen, int ret, int err)
{
    return SHIM_LIKELY(fdtab_type(seen) != 0) && !(ret < 0 && (err == EBADF || err == ENOTSOCK));
}

/* Before a first occurrence keyed by a cached type: the type as the kernel has it now (the table is
 * corrected if it was stale). */
static __attribute__((noinline)) int verify_type(int fd)
{
    unsigned epoch = fdtab_epoch();
    uint32_t seen = fdtab_get(fd);
    int type = sockopt_int(fd, SO_TYPE);
    if (type != fdtab_type(seen))
        fdtab_learn(fd, seen, epoch, type);
    return type;
}

/* 1 when `key` was seen before (the repeat is counted). */
static inline int net_seen(uint64_t key)
{
    dedup_tick();
    return dedup_hit(key);
}

/* A behaviour not in the table under `key`: verifies a cached type, then reports. */
static __attribute__((noinline)) void net_miss(const struct net_call *c, const void *id,
                                               size_t idlen, uint64_t key)
{
    if (c->cached) {
        int type = verify_type(c->fd);
        if (SHIM_UNLIKELY(type != c->type)) { /* stale entry: this is another behaviour */
            if (c->dgram_only && type != SOCK_DGRAM)
                return;
            struct net_call fixed = *c;
            fixed.type = type;
            fixed.cached = 0;
            key = net_key(c->kind, type, id, idlen);
            if (dedup_hit(key))
                return;
            net_first(&fixed, key);
            return;
        }
    }
    net_first(c, key);
}

/* Reports `c` unless its identity (kind, type, then `id` bytes) was seen before. */
static void net_report(const struct net_call *c, const void *id, size_t idlen)
{
    uint64_t key = net_key(c->kind, c->type, id, idlen);
    if (SHIM_LIKELY(net_seen(key)))
        return;
    net_miss(c, id, idlen, key);
}

static __attribute__((noinline)) void net_event_miss(unsigned kind, int fd, int type, int cached,
                                                    uint64_t key, const void *addr, size_t alen,
                                                    int ret, int err, int has_backlog, int backlog)
{
    struct net_call c = {
        .kind = kind,
        .fd = fd,
        .addr = addr,
        .alen = alen,
        .has_result = 1,
        .ret = ret,
        .err = err,
        .has_backlog = has_backlog,
        .backlog = backlog,
        .type = type,
        .cached = cached,
    };
    net_miss(&c, addr, alen, key);
}

/* connect, bind, listen: the dedup lookup inline, the rest out of line. */
static inline __attribute__((always_inline)) void net_event(unsigned kind, int fd, const void *addr,
                                                            size_t alen, int ret, int err,
                                                            int has_backlog, int backlog)
{
    uint32_t seen = fdtab_get(fd);
    int cached = usable_entry(seen, ret, err);
    int type = cached ? fdtab_type(seen) : learn_type(fd, seen);
    uint64_t key = net_key(kind, type, addr, alen);
    if (SHIM_LIKELY(net_seen(key)))
        return;
    net_event_miss(kind, fd, type, cached, key, addr, alen, ret, err, has_backlog, backlog);
}

SHIM_EXPORT int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
    SHIM_REAL_OR_FAIL(connect, -1);
    int ret = real_connect(fd, addr, len);
    int err = errno;
    if (shim_enter()) {
        net_event(KIND_CONNECT, fd, addr, readable_len(addr, len, ret, err), ret, err, 0, 0);
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
        net_event(KIND_BIND, fd, addr, readable_len(addr, len, ret, err), ret, err, 0, 0);
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
        net_event(KIND_LISTEN, fd, &local, alen, ret, err, 1, backlog);
        shim_leave();
    }
    errno = err;
    return ret;
}

/* socket: reported only for the sockets that need privileges and bypass the usual protocols:
 * SOCK_RAW and SOCK_PACKET of any domain, and every AF_PACKET socket. RESULT and SOCKINFO (the
 * arguments, type without SOCK_NONBLOCK/SOCK_CLOEXEC); identity: domain, type and protocol. */
SHIM_EXPORT int socket(int domain, int type, int protocol)
{
    SHIM_REAL_OR_FAIL(socket, -1);
    int ret = real_socket(domain, type, protocol);
    int err = errno;
    int base = type & ~(SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (ret >= 0)
        fdtab_set(ret, base);
    if ((base == SOCK_RAW || base == SOCK_PACKET || domain == AF_PACKET) && shim_enter()) {
        struct net_call c = {
            .kind = KIND_SOCKET,
            .fd = -1,
            .info_given = 1,
            .info = {domain, base, protocol},
            .type = base,
            .has_result = 1,
            .ret = ret,
            .err = err,
        };
        int32_t id[2] = {domain, protocol};
        net_report(&c, id, sizeof id);
        shim_leave();
    }
    errno = err;
    return ret;
}

/* The peer address without its port (and IPv6 flow label), so that every connection from one
 * client host has the same identity. */
static size_t peer_identity(const struct sockaddr_storage *peer, size_t len,
                            struct sockaddr_storage *id)
{
    memcpy(id, peer, len);
    if (peer->ss_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
        ((struct sockaddr_in *)id)->sin_port = 0;
    } else if (peer->ss_family == AF_INET6 && len >= sizeof(struct sockaddr_in6)) {
        ((struct sockaddr_in6 *)id)->sin6_port = 0;
        ((struct sockaddr_in6 *)id)->sin6_flowinfo = 0;
    }
    return len;
}

/* accept, accept4: reported when they succeed, with SOCKINFO of the new socket and SOCKADDR of
 * the peer (getpeername, whatever the program asked for); identity: socket type and the peer
 * address without its port. */
static void accept_event(int fd)
{
    struct sockaddr_storage peer, id;
    socklen_t plen = sizeof peer;
    size_t alen = 0;
    if (getpeername(fd, (struct sockaddr *)&peer, &plen) == 0)
        alen = plen > sizeof peer ? sizeof peer : plen;
    uint32_t seen = fdtab_get(fd);
    int cached = usable_entry(seen, 0, 0);
    struct net_call c = {
        .kind = KIND_ACCEPT,
        .fd = fd,
        .type = cached ? fdtab_type(seen) : learn_type(fd, seen),
        .cached = cached,
        .addr = &peer,
        .alen = alen,
    };
    size_t idlen = alen ? peer_identity(&peer, alen, &id) : 0;
    net_report(&c, &id, idlen);
}

SHIM_EXPORT int accept(int fd, struct sockaddr *addr, socklen_t *len)
{
    SHIM_REAL_OR_FAIL(accept, -1);
    int ret = real_accept(fd, addr, len);
    int err = errno;
    if (ret >= 0)
        fdtab_set(ret, fdtab_type(fdtab_get(fd))); /* the listening socket's type, if known */
    if (ret >= 0 && shim_enter()) {
        accept_event(ret);
        shim_leave();
    }
    errno = err;
    return ret;
}

SHIM_EXPORT int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags)
{
    SHIM_REAL_OR_FAIL(accept4, -1);
    int ret = real_accept4(fd, addr, len, flags);
    int err = errno;
    if (ret >= 0)
        fdtab_set(ret, fdtab_type(fdtab_get(fd))); /* the listening socket's type, if known */
    if (ret >= 0 && shim_enter()) {
        accept_event(ret);
        shim_leave();
    }
    errno = err;
    return ret;
}

/* sendto, sendmsg: reported when the program gives a destination address and the socket is a
 * datagram socket (SOCK_DGRAM); RESULT, SOCKINFO, SOCKADDR of the destination. Identity: socket
 * type and the destination bytes. */
static void send_event(int fd, const void *addr, size_t alen, ssize_t ret, int err)
{
    /* Only a cached SOCK_DGRAM is trusted here (and verified before a first report): a cached
     * other type could hide a datagram socket's sends, so that answer is asked of the kernel. */
    uint32_t seen = fdtab_get(fd);
    int cached = fdtab_type(seen) == SOCK_DGRAM && usable_entry(seen, ret < 0 ? -1 : 0, err);
    int type = cached ? SOCK_DGRAM : learn_type(fd, seen);
    if (type != SOCK_DGRAM)
        return;
    struct net_call c = {
        .kind = KIND_SEND,
        .fd = fd,
        .type = type,
        .cached = cached,
        .dgram_only = 1,
        .addr = addr,
        .alen = alen,
        .has_result = 1,
        .ret = ret < 0 ? -1 : (ret > INT32_MAX ? INT32_MAX : (int)ret),
        .err = err,
    };
    net_report(&c, addr, alen);
}

SHIM_EXPORT ssize_t sendto(int fd, const void *buf, size_t n, int flags,
                           const struct sockaddr *addr, socklen_t len)
{
    SHIM_REAL_OR_FAIL(sendto, -1);
    ssize_t ret = real_sendto(fd, buf, n, flags, addr, len);
    int err = errno;
    if (addr != NULL && len > 0) {
        size_t alen = readable_len(addr, len, ret < 0 ? -1 : 0, err);
        if (alen && shim_enter()) {
            send_event(fd, addr, alen, ret, err);
            shim_leave();
        }
    }
    errno = err;
    return ret;
}

SHIM_EXPORT ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
    SHIM_REAL_OR_FAIL(sendmsg, -1);
    ssize_t ret = real_sendmsg(fd, msg, flags);
    int err = errno;
    /* The kernel read *msg unless it failed with EFAULT; only then is reading it ourselves safe. */
    if (msg != NULL && !(ret < 0 && err == EFAULT) && msg->msg_name != NULL &&
        msg->msg_namelen > 0) {
        size_t alen = readable_len(msg->msg_name, msg->msg_namelen, ret < 0 ? -1 : 0, err);
        if (alen && shim_enter()) {
            send_event(fd, msg->msg_name, alen, ret, err);
            shim_leave();
        }
    }
    errno = err;
    return ret;
}
