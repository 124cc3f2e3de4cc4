/* Two OpenSSL versions in one process, as fake libraries (built by tests/test_shim_calls.py):
 *
 *   -DFAKE_LIB=\"1.1\"   libcrypto.so.1.1 whose EVP_md5 is EVP_md5@@OPENSSL_1_1_0
 *   -DFAKE_LIB=\"3\"     libcrypto.so.3 whose EVP_md5 is EVP_md5@@OPENSSL_3.0.0
 *   -DPLUGIN           a plugin linked against the 1.1 one: plugin_md5() calls its EVP_md5
 *   (neither)          the program, linked against the 3 one; argv[1] is the plugin
 *
 * Each EVP_md5 returns a marker naming its library; the program prints what it gets, then what
 * the plugin gets. */
#if defined(FAKE_LIB)
const char *EVP_md5(void)
{
    return "md5 of libcrypto " FAKE_LIB;
}
#elif defined(PLUGIN)
const char *EVP_md5(void);
const char *plugin_md5(void)
{
    return EVP_md5();
}
#else
#include <dlfcn.h>
#include <stdio.h>

const char *EVP_md5(void);

int main(int argc, char **argv)
{
    if (argc != 2)
        return 64;
    printf("program: %s\n", EVP_md5());
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        fprintf(stderr, "%s\n", dlerror());
        return 1;
    }
    const char *(*plugin_md5)(void) = (const char *(*)(void))dlsym(h, "plugin_md5");
    if (plugin_md5 == NULL)
        return 1;
    printf("plugin: %s\n", plugin_md5());
    return 0;
}
#endif
