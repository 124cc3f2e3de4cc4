/* exec_ruid PROGRAM: as root, takes real user id 65534 (nobody) keeping effective user id 0, then
 * execs PROGRAM with the clean environment {"A=1"}: the shim must add its variables back, having
 * checked that the loader (which opens the preload with the effective ids) can read its file. */
#include "tt_test.h"

int main(int argc, char **argv)
{
    if (argc != 2)
        die("usage: exec_ruid PROGRAM");
    if (setresuid(65534, 0, 0) != 0)
        die("setresuid");
    char *args[] = {argv[1], NULL};
    char *env[] = {"A=1", NULL};
    execve(argv[1], args, env);
    die("execve");
}
