/* crypto_dlerror: linked against OpenSSL 3; a dlopen of a missing library leaves an error pending,
 * then the program's first EVP_md5 call; prints the digest size and what dlerror() returns. */
#include <dlfcn.h>
#include <openssl/evp.h>
#include <stdio.h>

int main(void)
{
    if (dlopen("libtelltale-no-such-library.so", RTLD_NOW) != NULL)
        return 2;
    const EVP_MD *md = EVP_md5();
    const char *e = dlerror();
    printf("%d %s\n", md != NULL ? EVP_MD_get_size(md) : -1, e ? e : "(no error)");
    return 0;
}
