/* late_agent: started before its agent exists. For 1.1 s it connects (UDP) to one address every
 * 10 ms, so a repeat summary is due while there is no agent; then makes 5 connects to distinct
 * addresses, prints "ready N" (N: connects to the repeated address), and waits for a line on stdin
 * (the agent is up by then). Then it makes a connect to a new address every 20 ms for 1.2 s: the
 * shim's last failed connection attempt was before the line arrived, and it retries at most once a
 * second, so one retry falls inside that window. */
#include "tt_test.h"

#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void pause_ms(long ms)
{
    struct timespec pause = {0, ms * 1000 * 1000};
    nanosleep(&pause, NULL);
}

static void connect_to(int port)
{
    struct sockaddr_in a = inet_addr_of("127.0.0.1", "9");
    a.sin_port = htons((unsigned short)port);
    if (connect_once(SOCK_DGRAM, &a) != 0)
        die("connect");
}

int main(void)
{
    double start = now();
    int repeated = 0;
    while (now() - start < 1.1) {
        connect_to(19999);
        repeated++;
        pause_ms(10);
    }
    int port = 20000;
    for (int i = 0; i < 5; i++)
        connect_to(port++);
    printf("ready %d\n", repeated);
    fflush(stdout);
    char line[16];
    if (!fgets(line, sizeof line, stdin))
        die("stdin closed");
    double go = now();
    while (now() - go < 1.2) {
        connect_to(port++);
        pause_ms(20);
    }
    return 0;
}
