/* strcpy called by the program and by a shared library it links (caller_lib.c): each call's
 * CALLER is the module that made it. */
#include <stdio.h>
#include <string.h>

size_t lib_copy(char *d, const char *s);

int main(void)
{
    char buf[32];
    strcpy(buf, "program");
    lib_copy(buf, "library");
    printf("%s\n", buf);
    return 0;
}
