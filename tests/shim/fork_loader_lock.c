/* fork_loader_lock: forks and execs /bin/true N times (argv[1], default 8) while another thread is
 * inside dl_iterate_phdr, holding the loader's lock, at every fork. glibc does not reset that lock
 * in a fork child, so a child that takes it waits forever: each child has an alarm and the program
 * fails (exit 1, "hung") when one is killed by it. Prints the children's pids, one a line. */
#include "tt_test.h"

#include <link.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>

static volatile int inside; /* 1 while the thread holds the loader's lock */
static volatile int stop;

static int hold(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)info;
    (void)size;
    (void)data;
    inside = 1;
    usleep(50000);
    inside = 0;
    return 1;
}

static void *walker(void *arg)
{
    (void)arg;
    while (!stop)
        dl_iterate_phdr(hold, NULL);
    return NULL;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 8;
    pthread_t t;
    if (pthread_create(&t, NULL, walker, NULL) != 0)
        die("pthread_create");
    int hung = 0;
    for (int i = 0; i < n && !hung; i++) {
        while (!inside)
            usleep(100);
        pid_t child = fork();
        if (child < 0)
            die("fork");
        if (child == 0) {
            alarm(3);
            char *args[] = {"true", NULL};
            execv("/bin/true", args);
            _exit(127);
        }
        int status;
        if (waitpid(child, &status, 0) != child)
            die("waitpid");
        if (WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM)
            hung = 1;
        else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            die("child %d failed: status %#x", (int)child, status);
        else
            printf("%d\n", (int)child);
    }
    stop = 1;
    pthread_join(t, NULL);
    if (hung) {
        printf("hung\n");
        return 1;
    }
    return 0;
}
