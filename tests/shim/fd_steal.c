/* fd_steal file|socket PATH IP PORT: closes every descriptor from 3 to 1023 (the shim's included)
 * and puts one of its own on every number from 900 to 1023: the file PATH opened for writing, or
 * one end of a socketpair. Then connects twice to IP:PORT (UDP). Exits 1 if anything arrived in
 * the file or on the other end of the socketpair. */
#include "tt_test.h"

#include <fcntl.h>
#include <sys/stat.h>

int main(int argc, char **argv)
{
    if (argc != 5)
        die("usage: fd_steal file|socket PATH IP PORT");
    int use_socket = !strcmp(argv[1], "socket");
    struct sockaddr_in a = inet_addr_of(argv[3], argv[4]);
    for (int fd = 3; fd < 1024; fd++)
        close(fd);
    int mine, peer = -1;
    if (use_socket) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv) != 0)
            die("socketpair");
        mine = sv[0];
        peer = sv[1];
    } else {
        mine = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (mine < 0)
            die("open %s", argv[2]);
    }
    for (int fd = 900; fd < 1024; fd++)
        if (dup2(mine, fd) != fd)
            die("dup2 %d", fd);
    for (int i = 0; i < 2; i++)
        if (connect_once(SOCK_DGRAM, &a) != 0)
            die("connect");
    if (use_socket) {
        char buf[8192];
        ssize_t n = recv(peer, buf, sizeof buf, MSG_DONTWAIT);
        if (n >= 0) {
            fprintf(stderr, "FAILED: %zd bytes sent on the program's socket\n", n);
            return 1;
        }
        if (errno != EAGAIN)
            die("recv");
    } else {
        struct stat st;
        if (fstat(mine, &st) != 0)
            die("fstat");
        if (st.st_size != 0) {
            fprintf(stderr, "FAILED: %lld bytes written into the program's file\n",
                    (long long)st.st_size);
            return 1;
        }
    }
    return 0;
}
