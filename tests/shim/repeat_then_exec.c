/* repeat_then_exec IP PORT: two UDP connects to IP:PORT, then execv("/bin/true"): the repeat can
 * only be reported if the shim flushes before the exec (no destructor runs across exec). */
#include "tt_test.h"

int main(int argc, char **argv)
{
    if (argc != 3)
        die("usage: repeat_then_exec IP PORT");
    struct sockaddr_in a = inet_addr_of(argv[1], argv[2]);
    for (int i = 0; i < 2; i++)
        if (connect_once(SOCK_DGRAM, &a) != 0)
            die("connect");
    char *args[] = {"true", NULL};
    execv("/bin/true", args);
    die("execv");
}
