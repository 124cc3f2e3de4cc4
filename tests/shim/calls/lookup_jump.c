/* lookup_jump FIFO PORT: a name lookup the program leaves with siglongjmp from a SIGALRM handler
 * (as libcurl's synchronous resolver times out), then EVP_md5 (its first call), a lookup of
 * localhost, EVP_md5 again from another call site, and a TCP connect to 127.0.0.1:PORT.
 *
 * The lookup is kept waiting by HOSTALIASES naming FIFO, a pipe nobody writes: the resolver opens it
 * for a name without dots that /etc/hosts does not have, and the open blocks. Prints "timed out"
 * and exits 0 when every step behaved; exits 2 when EVP_md5 returned NULL, 77 when the lookup
 * finished (the system's resolver does not read HOSTALIASES: nothing was tested). */
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

const void *EVP_md5(void);

static sigjmp_buf env;

static void on_alarm(int sig)
{
    (void)sig;
    siglongjmp(env, 1);
}

int main(int argc, char **argv)
{
    if (argc != 3)
        return 64;
    if (setenv("HOSTALIASES", argv[1], 1) != 0)
        return 1;
    signal(SIGALRM, on_alarm);
    if (sigsetjmp(env, 1) == 0) {
        alarm(1);
        struct addrinfo *res = NULL;
        int rc = getaddrinfo("telltaleslowname", "80", NULL, &res);
        alarm(0);
        printf("lookup finished: %d\n", rc);
        return 77;
    }
    puts("timed out");
    if (EVP_md5() == NULL)
        return 2;
    struct addrinfo *res = NULL;
    if (getaddrinfo("localhost", "80", NULL, &res) != 0)
        return 3;
    freeaddrinfo(res);
    if (EVP_md5() == NULL)
        return 2;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
    inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr);
    (void)connect(fd, (struct sockaddr *)&sin, sizeof sin);
    close(fd);
    return 0;
}
