/* Maps and protects memory writable and executable (and not), then fails a W+X mmap: prints the
 * page size, and checks each call's result and errno are what the kernel gave. */
#include "tt_test.h"

#include <sys/mman.h>

int main(void)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    for (int i = 0; i < 2; i++) {
        void *wx = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS,
                        -1, 0);
        if (wx == MAP_FAILED)
            die("mmap rwx");
        munmap(wx, 2 * page);
    }
    void *rw = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (rw == MAP_FAILED)
        die("mmap rw");
    if (mprotect(rw, page, PROT_READ | PROT_EXEC) != 0)
        die("mprotect rx");
    if (mprotect(rw, page, PROT_READ | PROT_WRITE | PROT_EXEC) != 0)
        die("mprotect rwx");
    if (pkey_mprotect(rw, page, PROT_WRITE | PROT_EXEC, -1) != 0)
        die("pkey_mprotect wx");
    errno = 0;
    void *bad = mmap(NULL, 0, PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (bad != MAP_FAILED || errno != EINVAL)
        die("mmap of length 0 did not fail with EINVAL");
    printf("%zu\n", page);
    return 0;
}
