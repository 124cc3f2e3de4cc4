/* lookup_longjmp FIFO PORT MODE: a name lookup the program leaves with siglongjmp from a SIGALRM
 * handler (an alarm-based resolver timeout), then, with no other lookup, a TCP connect to
 * 127.0.0.1:PORT:
 *
 *   above   connect is called from main, above the frame the lookup was called from;
 *   deep    connect is called from below a large buffer main's callee fills first, so from
 *           deeper on the stack than the abandoned lookup was, over its reused frames; then
 *           again, to the same address, from main (above).
 *
 * The lookup is kept waiting by HOSTALIASES naming FIFO, a pipe nobody writes: the resolver opens
 * it for a name without dots that /etc/hosts does not have, and the open blocks. Prints
 * "timed out" when the lookup was left; exits 77 when it finished (the system's resolver does not
 * read HOSTALIASES: nothing was tested). */
#include "tt_test.h"

#include <netdb.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/time.h>

static sigjmp_buf env;

static void on_alarm(int sig)
{
    (void)sig;
    siglongjmp(env, 1);
}

/* 1 when the lookup was left by the alarm. */
static __attribute__((noinline)) int lookup_with_timeout(void)
{
    if (sigsetjmp(env, 1) != 0)
        return 1;
    struct itimerval t = {.it_value = {.tv_sec = 0, .tv_usec = 200000}};
    setitimer(ITIMER_REAL, &t, NULL);
    struct addrinfo *res = NULL;
    int rc = getaddrinfo("telltaleslowname", "80", NULL, &res);
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    printf("lookup finished: %d\n", rc);
    return 0;
}

static __attribute__((noinline)) int connect_deep(const struct sockaddr_in *a)
{
    volatile char pad[16384];
    for (size_t i = 0; i < sizeof pad; i++)
        pad[i] = (char)i;
    return connect_once(SOCK_STREAM, a) + pad[0];
}

int main(int argc, char **argv)
{
    if (argc != 4)
        die("usage: lookup_longjmp FIFO PORT above|deep");
    if (setenv("HOSTALIASES", argv[1], 1) != 0)
        die("setenv");
    struct sockaddr_in a = inet_addr_of("127.0.0.1", argv[2]);
    signal(SIGALRM, on_alarm);
    if (!lookup_with_timeout())
        return 77;
    puts("timed out");
    fflush(stdout);
    if (strcmp(argv[3], "deep") == 0) {
        if (connect_deep(&a) != 0)
            die("connect");
        if (connect_once(SOCK_STREAM, &a) != 0)
            die("connect");
    } else {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0 || connect(fd, (const struct sockaddr *)&a, sizeof a) != 0)
            die("connect");
        close(fd);
    }
    return 0;
}
