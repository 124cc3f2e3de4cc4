/* Calls strcpy from 512 distinct call sites, argv[1] rounds (default 20): enough sites that many
 * of them sit past their first slot of the shim's call-site table. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *(*volatile copy)(char *, const char *) = strcpy;

#define X1 copy(buf, "0123456789");
#define X4 X1 X1 X1 X1
#define X16 X4 X4 X4 X4
#define X64 X16 X16 X16 X16
#define X512 X64 X64 X64 X64 X64 X64 X64 X64

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 20;
    char buf[32];
    for (int r = 0; r < rounds; r++) {
        X512
    }
    printf("%s\n", buf);
    return 0;
}
