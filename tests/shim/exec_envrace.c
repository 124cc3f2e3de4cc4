/* exec_envrace N: one thread assigns environ back and forth between two complete environments
 * (each valid on its own: an ordinary, if unusual, program) while the main thread vforks N
 * children that execv /usr/bin/env. After each child the parent prints a line "--". Without the
 * shim every child prints one of the two environments; with it, one of them plus telltale's
 * variables. */
#include "tt_test.h"

#include <pthread.h>
#include <stdatomic.h>
#include <sys/wait.h>

extern char **environ;

static char *env_a[] = {"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=1",
                        "LD_PRELOAD=libc.so.6", "B=2", NULL};
static char *env_b[] = {"H=1", "B=2", NULL};
static atomic_int stop;
static atomic_int started;

static void *flip(void *arg)
{
    (void)arg;
    char **volatile *e = (char **volatile *)&environ;
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        *e = env_a;
        *e = env_b;
        atomic_store_explicit(&started, 1, memory_order_relaxed);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 2)
        die("usage: exec_envrace N");
    int n = atoi(argv[1]);
    pthread_t t;
    if (pthread_create(&t, NULL, flip, NULL) != 0)
        die("pthread_create");
    while (!atomic_load(&started))
        ;
    for (int i = 0; i < n; i++) {
        pid_t pid = vfork();
        if (pid == 0) {
            char *args[] = {"env", NULL};
            execv("/usr/bin/env", args);
            _exit(127);
        }
        if (pid < 0 || waitpid(pid, NULL, 0) != pid)
            die("vfork");
        printf("--\n");
        fflush(stdout);
    }
    atomic_store(&stop, 1);
    pthread_join(t, NULL);
    return 0;
}
