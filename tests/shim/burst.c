/* burst COUNT: UDP connects to COUNT distinct loopback addresses (more than the dedup table
 * holds) and one exec attempt that fails; for agents that are absent or never read. */
#include "tt_test.h"

int main(int argc, char **argv)
{
    if (argc != 2)
        die("usage: burst COUNT");
    int n = atoi(argv[1]);
    for (int i = 0; i < n; i++) {
        struct sockaddr_in a = inet_addr_of("127.0.0.1", "9");
        a.sin_port = htons((unsigned short)(10000 + i % 50000));
        a.sin_addr.s_addr = htonl(0x7f000001u + (unsigned)(i / 50000));
        if (connect_once(SOCK_DGRAM, &a) != 0)
            die("connect %d", i);
    }
    execl("/nonexistent/program", "program", (char *)NULL);
    return 0;
}
