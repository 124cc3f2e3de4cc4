/* accept_clients COUNT: listens on 127.0.0.1, connects COUNT clients to itself and accepts each
 * (accept for the first, accept4 for the others). Prints the listening port. */
#include "tt_test.h"

int main(int argc, char **argv)
{
    if (argc != 2)
        die("usage: accept_clients COUNT");
    int n = atoi(argv[1]);
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    if (lfd < 0)
        die("socket");
    struct sockaddr_in a = inet_addr_of("127.0.0.1", "0");
    socklen_t len = sizeof a;
    if (bind(lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(lfd, 16) != 0 ||
        getsockname(lfd, (struct sockaddr *)&a, &len) != 0)
        die("bind/listen");
    for (int i = 0; i < n; i++) {
        int c = socket(AF_INET, SOCK_STREAM, 0);
        if (c < 0 || connect(c, (struct sockaddr *)&a, sizeof a) != 0)
            die("connect %d", i);
        struct sockaddr_in peer;
        socklen_t plen = sizeof peer;
        int s = i == 0 ? accept(lfd, (struct sockaddr *)&peer, &plen) : accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (s < 0)
            die("accept %d", i);
        close(s);
        close(c);
    }
    printf("%d\n", ntohs(a.sin_port));
    close(lfd);
    return 0;
}
