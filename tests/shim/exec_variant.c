/* exec_variant NAME: execs /bin/true ("true" for the PATH-searching variants) through the named
 * exec entry point, with argv {"true", "via-NAME"}. Exits 127 if the exec returned. */
#include "tt_test.h"

#include <fcntl.h>

int main(int argc, char **argv)
{
    if (argc != 2)
        die("usage: exec_variant NAME");
    const char *v = argv[1];
    char tag[64];
    snprintf(tag, sizeof tag, "via-%s", v);
    char *args[] = {"true", tag, NULL};

    if (!strcmp(v, "execve")) {
        execve("/bin/true", args, environ);
    } else if (!strcmp(v, "execv")) {
        execv("/bin/true", args);
    } else if (!strcmp(v, "execvp")) {
        execvp("true", args);
    } else if (!strcmp(v, "execvpe")) {
        execvpe("true", args, environ);
    } else if (!strcmp(v, "execl")) {
        execl("/bin/true", "true", tag, (char *)NULL);
    } else if (!strcmp(v, "execlp")) {
        execlp("true", "true", tag, (char *)NULL);
    } else if (!strcmp(v, "execle")) {
        execle("/bin/true", "true", tag, (char *)NULL, environ);
    } else if (!strcmp(v, "fexecve")) {
        int fd = open("/bin/true", O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            die("open /bin/true");
        fexecve(fd, args, environ);
    } else if (!strcmp(v, "execveat")) {
        execveat(AT_FDCWD, "/bin/true", args, environ, 0);
    } else {
        die("unknown variant %s", v);
    }
    perror("exec");
    return 127;
}
