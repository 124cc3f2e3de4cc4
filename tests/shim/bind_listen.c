/* bind_listen: binds a TCP socket to 0.0.0.0 port 0, listens with backlog 16, prints the port. */
#include "tt_test.h"

int main(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        die("socket");
    struct sockaddr_in a = inet_addr_of("0.0.0.0", "0");
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0)
        die("bind");
    if (listen(fd, 16) != 0)
        die("listen");
    socklen_t len = sizeof a;
    if (getsockname(fd, (struct sockaddr *)&a, &len) != 0)
        die("getsockname");
    printf("%d\n", ntohs(a.sin_port));
    close(fd);
    return 0;
}
