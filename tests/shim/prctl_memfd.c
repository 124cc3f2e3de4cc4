/* prctl_memfd: prctl(PR_SET_DUMPABLE, 1) twice and PR_GET_DUMPABLE once (not a reported option),
 * then memfd_create("x", MFD_CLOEXEC). Successful calls must leave errno untouched. Prints the
 * memfd descriptor. */
#include "tt_test.h"

#include <sys/mman.h>
#include <sys/prctl.h>

int main(void)
{
    for (int i = 0; i < 2; i++) {
        errno = 55;
        if (prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) != 0 || errno != 55)
            die("PR_SET_DUMPABLE");
    }
    if (prctl(PR_GET_DUMPABLE) != 1)
        die("PR_GET_DUMPABLE");
    errno = 66;
    int fd = memfd_create("x", MFD_CLOEXEC);
    if (fd < 0 || errno != 66)
        die("memfd_create");
    printf("%d\n", fd);
    return 0;
}
