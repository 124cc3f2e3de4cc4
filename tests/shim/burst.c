/* burst COUNT [paced]: UDP connects to COUNT distinct loopback addresses (more than the dedup table
 * holds) and one exec attempt that fails; for agents that are absent or never read.
 *
 * With "paced", before each call that sends a record the program waits (poll, 10 s at most) until
 * the shim's connection to the agent is writable again, so that no record is dropped however
 * slowly the agent reads: a SEQPACKET socket is writable while its queued, unread bytes fill no
 * more than a quarter of its send buffer. The shim's socket is the SOCK_SEQPACKET unix socket on
 * a descriptor >= 900 (FORMAT.md, Delivery); exits 3 when there is none. */
#include "tt_test.h"

#include <poll.h>

static int shim_socket(void)
{
    for (int fd = 900; fd < 4096; fd++) {
        int type = 0, domain = 0;
        socklen_t n = sizeof type;
        if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &n) != 0 || type != SOCK_SEQPACKET)
            continue;
        n = sizeof domain;
        if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &n) == 0 && domain == AF_UNIX)
            return fd;
    }
    return -1;
}

/* Waits until the agent has read enough of what the shim queued. */
static void pace(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    if (fd >= 0 && poll(&p, 1, 10000) != 1)
        die("the agent read nothing for 10 s");
}

int main(int argc, char **argv)
{
    if (argc != 2 && !(argc == 3 && strcmp(argv[2], "paced") == 0))
        die("usage: burst COUNT [paced]");
    int n = atoi(argv[1]);
    int fd = -1;
    if (argc == 3 && (fd = shim_socket()) < 0) {
        fprintf(stderr, "no connection to an agent\n");
        return 3;
    }
    for (int i = 0; i < n; i++) {
        struct sockaddr_in a = inet_addr_of("127.0.0.1", "9");
        a.sin_port = htons((unsigned short)(10000 + i % 50000));
        a.sin_addr.s_addr = htonl(0x7f000001u + (unsigned)(i / 50000));
        pace(fd);
        if (connect_once(SOCK_DGRAM, &a) != 0)
            die("connect %d", i);
    }
    pace(fd);
    execl("/nonexistent/program", "program", (char *)NULL);
    return 0;
}
