/* ptrace_calls: PTRACE_PEEKUSER twice on a pid that cannot exist (fails with ESRCH), then a fork
 * child that asks to be traced (PTRACE_TRACEME) and exits. Prints the child's pid. */
#include "tt_test.h"

#include <sys/ptrace.h>
#include <sys/wait.h>

int main(void)
{
    for (int i = 0; i < 2; i++) {
        errno = 0;
        long ret = ptrace(PTRACE_PEEKUSER, (pid_t)2147483647, (void *)0, (void *)0);
        if (ret != -1 || errno != ESRCH)
            die("PTRACE_PEEKUSER on a missing pid gave %ld", ret);
    }
    pid_t child = fork();
    if (child < 0)
        die("fork");
    if (child == 0) {
        errno = 99;
        if (ptrace(PTRACE_TRACEME, 0, (void *)0, (void *)0) != 0 || errno != 99)
            _exit(1);
        exit(0);
    }
    int status;
    if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        die("child failed");
    printf("%d\n", (int)child);
    return 0;
}
