/* repeat_connect IP PORT COUNT: COUNT UDP connects to the same address, each on a new socket. */
#include "tt_test.h"

int main(int argc, char **argv)
{
    if (argc != 4)
        die("usage: repeat_connect IP PORT COUNT");
    struct sockaddr_in a = inet_addr_of(argv[1], argv[2]);
    int n = atoi(argv[3]);
    for (int i = 0; i < n; i++)
        if (connect_once(SOCK_DGRAM, &a) != 0)
            die("connect %d", i);
    return 0;
}
