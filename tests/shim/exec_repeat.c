/* exec_repeat: tries twice to exec a program that does not exist, with 20 arguments of 100 bytes
 * (2 KiB, more than the shim keeps of a first occurrence), then exits normally. */
#include "tt_test.h"

int main(void)
{
    static char args[20][101];
    char *argv[21];
    for (int i = 0; i < 20; i++) {
        memset(args[i], 'a' + i, 100);
        argv[i] = args[i];
    }
    argv[20] = NULL;
    for (int i = 0; i < 2; i++)
        if (execv("/nonexistent/program", argv) != -1 || errno != ENOENT)
            die("execv did not fail with ENOENT");
    return 0;
}
