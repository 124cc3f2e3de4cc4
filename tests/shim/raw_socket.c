/* raw_socket: opens an ICMP raw socket twice and an ordinary UDP socket once. Exits 0 when the
 * raw socket was created, 3 when it was refused (no CAP_NET_RAW). */
#include "tt_test.h"

int main(void)
{
    int ok = 1;
    for (int i = 0; i < 2; i++) {
        int fd = socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_ICMP);
        if (fd < 0)
            ok = 0;
        else
            close(fd);
    }
    int u = socket(AF_INET, SOCK_DGRAM, 0);
    if (u < 0)
        die("socket");
    close(u);
    return ok ? 0 : 3;
}
