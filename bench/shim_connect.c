/* The cost of a hooked connect(), timed from inside a process (bench/shim_overhead.py runs it with
 * and without the shim, and under strace).
 *
 *   shim_connect HIT_CALLS DISTINCT
 *
 * On one UDP socket (connecting a UDP socket needs no listener and never blocks):
 *   hit        HIT_CALLS connects to 127.0.0.1:9 after a first, untimed one: with the shim, every
 *              timed call is a dedup hit (counted, not sent);
 *   unspec     HIT_CALLS connects with an AF_UNSPEC address (which dissolves the association; the
 *              cheapest connect the kernel serves, so the cheapest hooked call with a dedup hit),
 *              after a first, untimed one;
 *   distinct   DISTINCT connects to 127.0.0.1 on distinct ports: with the shim, each one is a first
 *              occurrence, so a record is built and sent;
 *   sockopt    HIT_CALLS getsockopt(SO_TYPE) calls, the system call a hooked connect used to add;
 *   ab_libc    in-process comparison, interleaved in batches of AB_BATCH calls: the AF_UNSPEC
 *   ab_hooked  connect called through libc's own symbol (looked up in libc.so.6, so no preloaded
 *              hook runs) and through the ordinary symbol (the shim's hook when it is preloaded).
 *              Each is printed as the median batch: AB_BATCH calls and their total time.
 * Prints one line per loop: NAME TOTAL_NS CALLS. Exits 2 on a setup error.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

enum { AB_BATCH = 250 };

typedef int connect_fn(int, const struct sockaddr *, socklen_t);

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static struct sockaddr_in loopback(unsigned short port)
{
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

static int cmp_ll(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

static long long batch(connect_fn *fn, int fd, const struct sockaddr *addr, socklen_t len)
{
    long long t0 = now_ns();
    for (int i = 0; i < AB_BATCH; i++)
        fn(fd, addr, len);
    return now_ns() - t0;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s HIT_CALLS DISTINCT\n", argv[0]);
        return 2;
    }
    long hits = atol(argv[1]);
    long distinct = atol(argv[2]);
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0 || hits < 1 || distinct < 1 || distinct > 20000) {
        perror("setup");
        return 2;
    }

    struct sockaddr_in same = loopback(9);
    if (connect(fd, (struct sockaddr *)&same, sizeof same) != 0) { /* first occurrence, untimed */
        perror("connect");
        return 2;
    }
    long long t0 = now_ns();
    for (long i = 0; i < hits; i++)
        connect(fd, (struct sockaddr *)&same, sizeof same);
    long long t1 = now_ns();
    printf("hit %lld %ld\n", t1 - t0, hits);

    struct sockaddr unspec;
    memset(&unspec, 0, sizeof unspec);
    unspec.sa_family = AF_UNSPEC;
    if (connect(fd, &unspec, sizeof unspec) != 0) { /* first occurrence, untimed */
        perror("connect AF_UNSPEC");
        return 2;
    }
    t0 = now_ns();
    for (long i = 0; i < hits; i++)
        connect(fd, &unspec, sizeof unspec);
    t1 = now_ns();
    printf("unspec %lld %ld\n", t1 - t0, hits);

    struct sockaddr_in *addrs = calloc((size_t)distinct, sizeof *addrs);
    if (addrs == NULL)
        return 2;
    for (long i = 0; i < distinct; i++)
        addrs[i] = loopback((unsigned short)(20000 + i));
    t0 = now_ns();
    for (long i = 0; i < distinct; i++)
        connect(fd, (struct sockaddr *)&addrs[i], sizeof addrs[i]);
    t1 = now_ns();
    printf("distinct %lld %ld\n", t1 - t0, distinct);

    int type;
    socklen_t len = sizeof type;
    t0 = now_ns();
    for (long i = 0; i < hits; i++)
        getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len);
    t1 = now_ns();
    printf("sockopt %lld %ld\n", t1 - t0, hits);

    void *libc = dlopen("libc.so.6", RTLD_LAZY | RTLD_NOLOAD);
    connect_fn *libc_connect = libc ? (connect_fn *)dlsym(libc, "connect") : NULL;
    long rounds = hits / (2 * AB_BATCH);
    if (libc_connect != NULL && rounds > 0) {
        long long *direct = calloc((size_t)rounds, sizeof *direct);
        long long *hooked = calloc((size_t)rounds, sizeof *hooked);
        if (direct == NULL || hooked == NULL)
            return 2;
        for (long r = 0; r < rounds; r++) {
            direct[r] = batch(libc_connect, fd, &unspec, sizeof unspec);
            hooked[r] = batch(connect, fd, &unspec, sizeof unspec);
        }
        qsort(direct, (size_t)rounds, sizeof *direct, cmp_ll);
        qsort(hooked, (size_t)rounds, sizeof *hooked, cmp_ll);
        printf("ab_libc %lld %d\n", direct[rounds / 2], AB_BATCH);
        printf("ab_hooked %lld %d\n", hooked[rounds / 2], AB_BATCH);
        free(direct);
        free(hooked);
    }
    free(addrs);
    return 0;
}
