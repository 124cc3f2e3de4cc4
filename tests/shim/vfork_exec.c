/* vfork_exec: vforks a child that execv's /bin/true {"true", "from-vfork"}; prints its pid. */
#include "tt_test.h"

#include <sys/wait.h>

int main(void)
{
    char *args[] = {"true", "from-vfork", NULL};
    pid_t child = vfork();
    if (child < 0)
        die("vfork");
    if (child == 0) {
        execv("/bin/true", args);
        _exit(127);
    }
    int status;
    if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        die("child failed");
    printf("%d\n", (int)child);
    return 0;
}
