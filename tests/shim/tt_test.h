/* Helpers shared by the shim's test programs. Each program exercises one hooked behaviour and
 * exits 0 when it ran as intended (2 on a setup error), printing what the test needs to know. */
#ifndef TT_TEST_H
#define TT_TEST_H

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static inline void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (errno %d: %s)\n", errno, strerror(errno));
    exit(2);
}

/* IPv4 socket address from a dotted address and a port given as text. */
static inline struct sockaddr_in inet_addr_of(const char *ip, const char *port)
{
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)atoi(port));
    if (inet_pton(AF_INET, ip, &a.sin_addr) != 1)
        die("bad address %s", ip);
    return a;
}

/* Opens a socket of `type`, connects it to `a` and closes it; returns connect's result. */
static inline int connect_once(int type, const struct sockaddr_in *a)
{
    int fd = socket(AF_INET, type, 0);
    if (fd < 0)
        die("socket");
    int ret = connect(fd, (const struct sockaddr *)a, sizeof *a);
    int err = errno;
    close(fd);
    errno = err;
    return ret;
}

#endif
