/* A signal handler running on an 8 KiB alternate stack (SA_ONSTACK) calls hooked functions:
 *   strcpy            copies a string, then the program exits 0
 *   execve            strcpy, then execve("/bin/true") with the program's environment
 *   execve_clean      strcpy, then execve("/bin/true") with an environment lacking the shim's
 *                     variables, which the shim repairs on the stack
 * Below the alternate stack lies an inaccessible page: a hook that overflows it faults. Exits with
 * /bin/true's status (0) after an exec. */
#include "tt_test.h"

#include <signal.h>
#include <sys/mman.h>

extern char **environ;

enum { ALT_SIZE = 8192 };

static const char *mode;
/* Through a pointer the compiler cannot see through: the call reaches the hook. */
static char *(*volatile copy)(char *, const char *) = strcpy;

static void handler(int sig)
{
    (void)sig;
    char text[32];
    copy(text, "in the handler");
    char *argv[] = {"true", NULL};
    if (strcmp(mode, "execve") == 0) {
        execve("/bin/true", argv, environ);
    } else if (strcmp(mode, "execve_clean") == 0) {
        char *env[] = {"A=1", "B=2", NULL};
        execve("/bin/true", argv, env);
    } else {
        return;
    }
    _exit(3); /* the exec failed */
}

int main(int argc, char **argv)
{
    if (argc != 2)
        die("usage: altstack_exec strcpy|execve|execve_clean");
    mode = argv[1];
    long page = sysconf(_SC_PAGESIZE);
    char *map = mmap(NULL, (size_t)page + ALT_SIZE, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED)
        die("mmap");
    if (mprotect(map, (size_t)page, PROT_NONE) != 0)
        die("mprotect");
    stack_t ss = {.ss_sp = map + page, .ss_size = ALT_SIZE, .ss_flags = 0};
    if (sigaltstack(&ss, NULL) != 0)
        die("sigaltstack");
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sa.sa_flags = SA_ONSTACK;
    if (sigaction(SIGUSR1, &sa, NULL) != 0)
        die("sigaction");
    raise(SIGUSR1);
    printf("handler returned\n");
    return 0;
}
