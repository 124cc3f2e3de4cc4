/* busy_threads THREADS ROUNDS: a workload whose threads all make hooked calls at once. Each of
 * THREADS threads, ROUNDS times: a TCP connect to a loopback listener (whose accepting thread
 * closes every connection), a UDP connect, an open and read of /etc/hostname, and a strcpy.
 * Prints a checksum of what they saw, which does not depend on timing. Bounded by an alarm. */
#include "tt_test.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/time.h>

static struct sockaddr_in listener_addr, udp_addr;
static int rounds;
static pthread_barrier_t start;

static void *accepter(void *arg)
{
    int lfd = (int)(long)arg;
    for (;;) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0)
            return NULL; /* the listener was shut down, or the wait timed out */
        close(fd);
    }
}

static void *worker(void *arg)
{
    unsigned long sum = (unsigned long)(long)arg;
    char name[64], copy[64];
    pthread_barrier_wait(&start);
    for (int i = 0; i < rounds; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&listener_addr, sizeof listener_addr) != 0)
            die("tcp connect");
        close(fd);
        if (connect_once(SOCK_DGRAM, &udp_addr) != 0)
            die("udp connect");
        fd = open("/etc/hostname", O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            die("open /etc/hostname");
        char buf[256];
        ssize_t n;
        while ((n = read(fd, buf, sizeof buf)) > 0)
            for (ssize_t j = 0; j < n; j++)
                sum += (unsigned char)buf[j];
        close(fd);
        snprintf(name, sizeof name, "round-%d", i);
        strcpy(copy, name);
        sum += strlen(copy) + 3;
    }
    return (void *)sum;
}

int main(int argc, char **argv)
{
    if (argc != 3)
        die("usage: busy_threads THREADS ROUNDS");
    int threads = atoi(argv[1]);
    rounds = atoi(argv[2]);
    if (threads < 1 || threads > 64 || rounds < 1)
        die("bad arguments");
    alarm(60);

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    listener_addr = inet_addr_of("127.0.0.1", "0");
    socklen_t len = sizeof listener_addr;
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&listener_addr, sizeof listener_addr) != 0 ||
        listen(lfd, 512) != 0 || getsockname(lfd, (struct sockaddr *)&listener_addr, &len) != 0)
        die("listener");
    struct timeval wait = {.tv_sec = 20};
    setsockopt(lfd, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof wait);
    udp_addr = inet_addr_of("127.0.0.1", "9");

    pthread_t acc, tids[64];
    if (pthread_create(&acc, NULL, accepter, (void *)(long)lfd) != 0)
        die("pthread_create");
    pthread_barrier_init(&start, NULL, (unsigned)threads);
    for (int t = 0; t < threads; t++)
        if (pthread_create(&tids[t], NULL, worker, (void *)(long)t) != 0)
            die("pthread_create");
    unsigned long total = 0;
    for (int t = 0; t < threads; t++) {
        void *ret;
        pthread_join(tids[t], &ret);
        total += (unsigned long)ret;
    }
    shutdown(lfd, SHUT_RDWR); /* wakes the accepting thread */
    pthread_join(acc, NULL);
    close(lfd);
    printf("threads %d rounds %d checksum %lu\n", threads, rounds, total);
    return 0;
}
