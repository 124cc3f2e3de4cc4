/* A failed dlopen leaves an error for dlerror(); the program's next call, the first of its kind
 * (argv[1]: strcpy, stpcpy, sprintf, mmap, mprotect, system, popen, capset), must not clear it.
 * Prints what dlerror() then returns. */
#include "tt_test.h"

#include <dlfcn.h>
#include <linux/capability.h>
#include <sys/mman.h>
#include <sys/syscall.h>

int capset(cap_user_header_t header, const cap_user_data_t data);

/* Through pointers the compiler cannot see through: the calls reach the hooks. */
static char *(*volatile copy)(char *, const char *) = strcpy;
static char *(*volatile copy_end)(char *, const char *) = stpcpy;
static int (*volatile format)(char *, const char *, ...) = sprintf;

int main(int argc, char **argv)
{
    if (argc != 2)
        die("usage: dlerror_keep function");
    const char *fn = argv[1];
    if (dlopen("libtelltale-no-such-library.so", RTLD_NOW) != NULL)
        die("dlopen of a missing library succeeded");
    char text[64];
    if (strcmp(fn, "strcpy") == 0) {
        copy(text, "x");
    } else if (strcmp(fn, "stpcpy") == 0) {
        copy_end(text, "x");
    } else if (strcmp(fn, "sprintf") == 0) {
        format(text, "%d", 1);
    } else if (strcmp(fn, "mmap") == 0) {
        void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            die("mmap");
    } else if (strcmp(fn, "mprotect") == 0) {
        if (mprotect(text - ((unsigned long)text & 4095), 4096, PROT_READ | PROT_WRITE) != 0)
            die("mprotect");
    } else if (strcmp(fn, "system") == 0) {
        if (system(NULL) == 0)
            die("system(NULL): no shell");
    } else if (strcmp(fn, "popen") == 0) {
        FILE *f = popen("true", "r");
        if (f == NULL)
            die("popen");
        pclose(f);
    } else if (strcmp(fn, "capset") == 0) {
        struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
        struct __user_cap_data_struct d[2];
        if (syscall(SYS_capget, &h, d) != 0 || capset(&h, d) != 0)
            die("capset");
    } else {
        die("unknown function %s", fn);
    }
    const char *e = dlerror();
    printf("%s\n", e ? e : "(no error)");
    return 0;
}
