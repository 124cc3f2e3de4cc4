/* dlopen_lib LIBRARY MISSING: loads LIBRARY (path or bare name) twice and calls its
 * tt_plugin_answer(), then tries MISSING twice, which must fail with the loader's own message.
 * Prints the answer. */
#include "tt_test.h"

#include <dlfcn.h>

int main(int argc, char **argv)
{
    if (argc != 3)
        die("usage: dlopen_lib LIBRARY MISSING");
    void *h = dlopen(argv[1], RTLD_NOW);
    if (h == NULL)
        die("dlopen %s: %s", argv[1], dlerror());
    int (*answer)(void) = (int (*)(void))dlsym(h, "tt_plugin_answer");
    if (answer == NULL)
        die("dlsym: %s", dlerror());
    if (dlopen(argv[1], RTLD_NOW) != h)
        die("second dlopen gave another handle");
    for (int i = 0; i < 2; i++) {
        if (dlopen(argv[2], RTLD_NOW) != NULL)
            die("dlopen %s succeeded", argv[2]);
        const char *err = dlerror();
        if (err == NULL || strstr(err, argv[2]) == NULL)
            die("dlerror lost the loader's message: %s", err ? err : "(null)");
    }
    printf("%d\n", answer());
    return 0;
}
