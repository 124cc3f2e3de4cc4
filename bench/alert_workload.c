/* A workload that makes one UDP connect() to ADDRESS:PORT and prints, on stdout, the
 * CLOCK_REALTIME time in nanoseconds read just before the call (bench/latency.py runs it under
 * `telltale run`). Exits 2 on a setup error; connect's own result does not matter. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s ADDRESS PORT\n", argv[0]);
        return 2;
    }
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)atoi(argv[2]));
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0 || inet_pton(AF_INET, argv[1], &a.sin_addr) != 1) {
        perror("setup");
        return 2;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    (void)connect(fd, (struct sockaddr *)&a, sizeof a);
    printf("%lld\n", (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
    close(fd);
    return 0;
}
