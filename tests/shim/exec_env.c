/* exec_env VARIANT TARGET COUNT [ENTRY...]: runs TARGET (argv {TARGET}) through the exec or spawn
 * entry point VARIANT (execve, execvpe, execle, fexecve, execveat, posix_spawn, posix_spawnp) with
 * an environment of exactly the ENTRY arguments, or the program's own environment when the only
 * ENTRY is "inherit". Spawn variants run it COUNT times, one after the other, and exit with the
 * last child's status; exec variants exit 127 if the exec returned. */
#include "tt_test.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>

int main(int argc, char **argv)
{
    if (argc < 4)
        die("usage: exec_env VARIANT TARGET COUNT [ENTRY...]");
    const char *v = argv[1];
    char *target = argv[2];
    int count = atoi(argv[3]);
    char **envp = argv + 4;
    if (argc == 5 && !strcmp(argv[4], "inherit"))
        envp = environ;
    char *args[] = {target, NULL};

    if (!strcmp(v, "posix_spawn") || !strcmp(v, "posix_spawnp")) {
        int status = 0;
        for (int i = 0; i < count; i++) {
            pid_t pid;
            int err = !strcmp(v, "posix_spawn") ? posix_spawn(&pid, target, NULL, NULL, args, envp)
                                                 : posix_spawnp(&pid, target, NULL, NULL, args, envp);
            if (err) {
                errno = err;
                die("spawn %s", target);
            }
            if (waitpid(pid, &status, 0) != pid)
                die("waitpid");
        }
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    if (!strcmp(v, "execve")) {
        execve(target, args, envp);
    } else if (!strcmp(v, "execvpe")) {
        execvpe(target, args, envp);
    } else if (!strcmp(v, "execle")) {
        execle(target, target, (char *)NULL, envp);
    } else if (!strcmp(v, "fexecve")) {
        int fd = open(target, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            die("open %s", target);
        fexecve(fd, args, envp);
    } else if (!strcmp(v, "execveat")) {
        execveat(AT_FDCWD, target, args, envp, 0);
    } else {
        die("unknown variant %s", v);
    }
    perror("exec");
    return 127;
}
