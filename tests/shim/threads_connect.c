/* threads_connect IP PORT BASE_PORT THREADS COUNT: THREADS threads start together; each makes
 * COUNT UDP connects to IP:PORT and one to IP:(BASE_PORT + its index). */
#include "tt_test.h"

#include <pthread.h>

static struct sockaddr_in shared_addr;
static const char *ip;
static int base_port, count;
static pthread_barrier_t start;

static void *worker(void *arg)
{
    int index = (int)(long)arg;
    char port[16];
    snprintf(port, sizeof port, "%d", base_port + index);
    struct sockaddr_in own = inet_addr_of(ip, port);
    pthread_barrier_wait(&start);
    for (int i = 0; i < count; i++) {
        if (connect_once(SOCK_DGRAM, &shared_addr) != 0)
            die("connect");
        if (i == count / 2 && connect_once(SOCK_DGRAM, &own) != 0)
            die("connect own");
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 6)
        die("usage: threads_connect IP PORT BASE_PORT THREADS COUNT");
    ip = argv[1];
    shared_addr = inet_addr_of(ip, argv[2]);
    base_port = atoi(argv[3]);
    int threads = atoi(argv[4]);
    count = atoi(argv[5]);
    pthread_t tids[64];
    if (threads < 1 || threads > 64 || count < 1)
        die("bad arguments");
    pthread_barrier_init(&start, NULL, (unsigned)threads);
    for (int i = 0; i < threads; i++)
        if (pthread_create(&tids[i], NULL, worker, (void *)(long)i) != 0)
            die("pthread_create");
    for (int i = 0; i < threads; i++)
        pthread_join(tids[i], NULL);
    return 0;
}
