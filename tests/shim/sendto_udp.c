/* sendto_udp IP PORT COUNT: COUNT datagrams to the same address with sendto, on one socket, then
 * one with sendmsg to the same address, then one send on a connected socket (no address). */
#include "tt_test.h"

#include <sys/uio.h>

int main(int argc, char **argv)
{
    if (argc != 4)
        die("usage: sendto_udp IP PORT COUNT");
    struct sockaddr_in a = inet_addr_of(argv[1], argv[2]);
    int n = atoi(argv[3]);
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0)
        die("socket");
    for (int i = 0; i < n; i++)
        if (sendto(fd, "x", 1, 0, (struct sockaddr *)&a, sizeof a) != 1)
            die("sendto %d", i);
    struct iovec iov = {.iov_base = "yy", .iov_len = 2};
    struct msghdr msg = {.msg_name = &a, .msg_namelen = sizeof a, .msg_iov = &iov, .msg_iovlen = 1};
    if (sendmsg(fd, &msg, 0) != 2)
        die("sendmsg");
    close(fd);
    return 0;
}
