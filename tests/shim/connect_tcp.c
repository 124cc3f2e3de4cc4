/* connect_tcp IP PORT: one TCP connection to a listener the test opened. */
#include "tt_test.h"

int main(int argc, char **argv)
{
    if (argc != 3)
        die("usage: connect_tcp IP PORT");
    struct sockaddr_in a = inet_addr_of(argv[1], argv[2]);
    if (connect_once(SOCK_STREAM, &a) != 0)
        die("connect");
    return 0;
}
