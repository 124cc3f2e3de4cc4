/* Unsafe C library calls from known call sites.
 *   unsafe_calls two        strcpy from two distinct call sites
 *   unsafe_calls loop N     strcpy N times from one call site, then exits normally
 *   unsafe_calls each       each hooked function once
 *   unsafe_calls errno      strcpy leaves errno as it was (exit 1 otherwise)
 * Built with -fno-builtin (and the calls go through volatile pointers) so that the compiler
 * cannot replace them with inline code. */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

char *gets(char *s); /* no longer declared by the headers */
char *getwd(char *buf);

static char *(*volatile copy)(char *, const char *) = strcpy;

static int call_vsprintf(char *d, const char *format, ...)
{
    va_list ap;
    va_start(ap, format);
    int n = vsprintf(d, format, ap);
    va_end(ap);
    return n;
}

int main(int argc, char **argv)
{
    char buf[PATH_MAX];
    const char *mode = argc > 1 ? argv[1] : "";
    if (strcmp(mode, "two") == 0) {
        copy(buf, "first");
        copy(buf, "second");
    } else if (strcmp(mode, "loop") == 0) {
        int n = argc > 2 ? atoi(argv[2]) : 1000;
        for (int i = 0; i < n; i++)
            copy(buf, "again");
    } else if (strcmp(mode, "each") == 0) {
        char *(*volatile cat)(char *, const char *) = strcat;
        char *(*volatile pcpy)(char *, const char *) = stpcpy;
        char *(*volatile get)(char *) = gets;
        copy(buf, "a");
        cat(buf, "b");
        pcpy(buf, "c");
        sprintf(buf, "%d", 1);
        call_vsprintf(buf, "%d", 2);
        (void)get(buf); /* stdin is /dev/null */
        (void)getwd(buf);
        char template[] = "/tmp/ttXXXXXX";
        (void)mktemp(template);
        (void)tmpnam(NULL);
        free(tempnam(NULL, "tt"));
    } else if (strcmp(mode, "errno") == 0) {
        errno = 4321;
        copy(buf, "kept");
        if (errno != 4321)
            return 1;
        errno = 0;
        copy(buf, "kept");
        if (errno != 0)
            return 1;
    } else {
        return 2;
    }
    printf("%s\n", buf);
    return 0;
}
