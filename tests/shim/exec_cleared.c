/* exec_cleared HOW VARIANT TARGET [UNLINK]: empties the environment, then runs TARGET (argv
 * {TARGET}) through VARIANT, one of the exec entry points that pass `environ` on (execv, execvp,
 * execl, execlp).
 *
 *   HOW cleared    clearenv(): environ is NULL;
 *   HOW replaced   clearenv() then setenv B=2: an environment of that entry alone.
 *
 * With UNLINK, that file is removed first (the shim's own, to make it unreachable at exec). Exits
 * 127 if the exec returned. */
#include "tt_test.h"

int main(int argc, char **argv)
{
    if (argc != 4 && argc != 5)
        die("usage: exec_cleared cleared|replaced VARIANT TARGET [UNLINK]");
    const char *how = argv[1], *v = argv[2];
    char *target = argv[3];
    char *args[] = {target, NULL};
    if (argc == 5 && unlink(argv[4]) != 0)
        die("unlink %s", argv[4]);
    if (clearenv() != 0)
        die("clearenv");
    if (!strcmp(how, "replaced")) {
        if (setenv("B", "2", 1) != 0)
            die("setenv");
    } else if (strcmp(how, "cleared") != 0) {
        die("unknown HOW %s", how);
    }
    if (!strcmp(v, "execv"))
        execv(target, args);
    else if (!strcmp(v, "execvp"))
        execvp(target, args);
    else if (!strcmp(v, "execl"))
        execl(target, target, (char *)NULL);
    else if (!strcmp(v, "execlp"))
        execlp(target, target, (char *)NULL);
    else
        die("unknown variant %s", v);
    perror("exec");
    return 127;
}
