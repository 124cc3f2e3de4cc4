/* A shared library that calls strcpy itself (see caller_main.c). Not as a tail call: the return
 * address of a tail call is in the caller's caller. */
#include <string.h>

size_t lib_copy(char *d, const char *s)
{
    strcpy(d, s);
    return strlen(d);
}
