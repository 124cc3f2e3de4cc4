/* two_types IP PORT: connects to IP:PORT twice over TCP and twice over UDP. */
#include "tt_test.h"

int main(int argc, char **argv)
{
    if (argc != 3)
        die("usage: two_types IP PORT");
    struct sockaddr_in a = inet_addr_of(argv[1], argv[2]);
    for (int i = 0; i < 2; i++)
        if (connect_once(SOCK_STREAM, &a) != 0 || connect_once(SOCK_DGRAM, &a) != 0)
            die("connect");
    return 0;
}
