/* drop_exec UID TARGET: becomes user and group UID (no supplementary groups), then execs TARGET
 * with the program's environment. Exits 127 if the exec returned. */
#include "tt_test.h"

#include <grp.h>

int main(int argc, char **argv)
{
    if (argc != 3)
        die("usage: drop_exec UID TARGET");
    unsigned id = (unsigned)atoi(argv[1]);
    if (setgroups(0, NULL) != 0 || setresgid(id, id, id) != 0 || setresuid(id, id, id) != 0)
        die("drop to %u", id);
    char *args[] = {argv[2], NULL};
    execv(argv[2], args);
    perror("exec");
    return 127;
}
