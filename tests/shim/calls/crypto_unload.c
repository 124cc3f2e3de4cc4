/* crypto_unload DIR N: loads DIR/libplug1.so .. DIR/libplugN.so (plugins of their own, by path),
 * then OpenSSL 3 by a bare name ("libcrypto.so.3", which the shim passes straight to the loader);
 * this program is not linked against OpenSSL. One thread calls EVP_md5 (found with
 * dlsym(RTLD_DEFAULT), so the shim's hook, first in the global scope) in a loop while the main
 * thread unloads the plugins. Then the program drops its own handle of libcrypto and prints
 * "calls C" (the loop's count) and "pinned" when libcrypto.so.3 is still loaded (the shim holds
 * it, with the function found), "unloaded" otherwise. Exits 3 when EVP_md5 returned NULL, 2 on a
 * setup error. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

enum { PLUGINS_MAX = 1000 };

static atomic_int stop;
static atomic_int failed;
static atomic_ulong calls;
static const void *(*md5)(void);

static void *caller(void *arg)
{
    (void)arg;
    while (!atomic_load(&stop)) {
        if (md5() == NULL)
            atomic_store(&failed, 1);
        atomic_fetch_add(&calls, 1);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 3)
        return 64;
    int n = atoi(argv[2]);
    if (n < 1 || n > PLUGINS_MAX)
        return 64;
    static void *plugin[PLUGINS_MAX];
    char name[4096];
    for (int i = 0; i < n; i++) {
        snprintf(name, sizeof name, "%s/libplug%d.so", argv[1], i + 1);
        if ((plugin[i] = dlopen(name, RTLD_NOW)) == NULL) {
            fprintf(stderr, "%s\n", dlerror());
            return 2;
        }
    }
    void *crypto = dlopen("libcrypto.so.3", RTLD_NOW);
    if (crypto == NULL) {
        fprintf(stderr, "%s\n", dlerror());
        return 2;
    }
    md5 = (const void *(*)(void))dlsym(RTLD_DEFAULT, "EVP_md5");
    if (md5 == NULL)
        return 2;
    pthread_t t;
    if (pthread_create(&t, NULL, caller, NULL) != 0)
        return 2;
    while (atomic_load(&calls) == 0)
        ;
    for (int i = 0; i < n; i++) {
        dlclose(plugin[i]);
        for (int k = 0; k < 20; k++)
            free(malloc(1200 + (size_t)k * 64)); /* reuse what the loader freed */
    }
    atomic_store(&stop, 1);
    pthread_join(t, NULL);
    if (atomic_load(&failed))
        return 3;
    dlclose(crypto);
    printf("calls %lu\n%s\n", atomic_load(&calls),
           dlopen("libcrypto.so.3", RTLD_NOW | RTLD_NOLOAD) != NULL ? "pinned" : "unloaded");
    return 0;
}
