/* spawn posix_spawn|posix_spawnp PATH: spawns PATH with argv {"true", "spawned"}, waits for it
 * and prints "<result> <child pid>" (child pid 0 when the spawn failed). */
#include "tt_test.h"

#include <spawn.h>
#include <sys/wait.h>

int main(int argc, char **argv)
{
    if (argc != 3)
        die("usage: spawn posix_spawn|posix_spawnp PATH");
    char *args[] = {"true", "spawned", NULL};
    pid_t pid = 0;
    int ret;
    if (!strcmp(argv[1], "posix_spawn"))
        ret = posix_spawn(&pid, argv[2], NULL, NULL, args, environ);
    else
        ret = posix_spawnp(&pid, argv[2], NULL, NULL, args, environ);
    if (ret == 0) {
        int status;
        if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
            die("child did not exit 0");
    } else {
        pid = 0;
    }
    printf("%d %d\n", ret, (int)pid);
    return 0;
}
