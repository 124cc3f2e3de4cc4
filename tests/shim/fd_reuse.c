/* fd_reuse MODE IP PORT_A PORT_B: one descriptor number first holds a UDP socket, then a TCP one.
 *
 * Connects the UDP socket to IP:PORT_A twice, then makes the same number refer to a TCP socket in
 * the way MODE names, and connects that to IP:PORT_A twice (a listener the test holds). Where the
 * number is freed by a call the shim sees, the TCP socket is created behind its back (a raw system
 * call), so only that call can have told the shim that the number changed:
 *   close        close;
 *   close_range  close_range(n, n, 0);
 *   closefrom    closefrom(n);
 *   fclose       fdopen the socket and fclose the stream;
 *   socket       closed behind the shim's back, then socket() takes the number again;
 *   dup2, dup3   a TCP socket duplicated onto the number;
 *   dup          the number closed behind the shim's back (raw system call), then dup() of a TCP
 *                socket takes it;
 *   fcntl        likewise with fcntl(F_DUPFD);
 *   raw          closed and re-created behind the shim's back (raw system calls), then connected to
 *                IP:PORT_B once before the two connects to PORT_A.
 * Exits 1 if the number was not reused as intended, 2 on a setup error.
 */
#include "tt_test.h"

#include <fcntl.h>
#include <sys/syscall.h>

static int raw_tcp_socket(void)
{
    return (int)syscall(SYS_socket, AF_INET, SOCK_STREAM, 0);
}

static int reuse(const char *mode, int fd)
{
    if (!strcmp(mode, "close")) {
        close(fd);
        return raw_tcp_socket();
    }
    if (!strcmp(mode, "close_range")) {
        if (close_range((unsigned)fd, (unsigned)fd, 0) != 0)
            die("close_range");
        return raw_tcp_socket();
    }
    if (!strcmp(mode, "closefrom")) {
        closefrom(fd);
        return raw_tcp_socket();
    }
    if (!strcmp(mode, "fclose")) {
        FILE *f = fdopen(fd, "r+");
        if (f == NULL)
            die("fdopen");
        fclose(f);
        return raw_tcp_socket();
    }
    if (!strcmp(mode, "socket")) {
        syscall(SYS_close, fd);
        return socket(AF_INET, SOCK_STREAM, 0);
    }
    if (!strcmp(mode, "raw")) {
        syscall(SYS_close, fd);
        return raw_tcp_socket();
    }
    int tcp = socket(AF_INET, SOCK_STREAM, 0);
    if (tcp < 0)
        die("socket");
    int got = -1;
    if (!strcmp(mode, "dup2")) {
        got = dup2(tcp, fd);
    } else if (!strcmp(mode, "dup3")) {
        got = dup3(tcp, fd, O_CLOEXEC);
    } else if (!strcmp(mode, "dup")) {
        syscall(SYS_close, fd);
        got = dup(tcp);
    } else if (!strcmp(mode, "fcntl")) {
        syscall(SYS_close, fd);
        got = fcntl(tcp, F_DUPFD, fd);
    } else {
        die("unknown mode %s", mode);
    }
    close(tcp);
    return got;
}

int main(int argc, char **argv)
{
    if (argc != 5)
        die("usage: fd_reuse MODE IP PORT_A PORT_B");
    struct sockaddr_in a = inet_addr_of(argv[2], argv[3]);
    struct sockaddr_in b = inet_addr_of(argv[2], argv[4]);
    int udp = socket(AF_INET, SOCK_DGRAM, 0);
    if (udp < 0)
        die("socket");
    for (int i = 0; i < 2; i++)
        if (connect(udp, (struct sockaddr *)&a, sizeof a) != 0)
            die("connect udp");
    int tcp = reuse(argv[1], udp);
    if (tcp != udp) {
        fprintf(stderr, "FAILED: got descriptor %d, expected %d\n", tcp, udp);
        return 1;
    }
    if (!strcmp(argv[1], "raw") && connect(tcp, (struct sockaddr *)&b, sizeof b) != 0)
        die("connect tcp to b");
    for (int i = 0; i < 2; i++)
        connect(tcp, (struct sockaddr *)&a, sizeof a); /* raw: already connected, EISCONN */
    return 0;
}
