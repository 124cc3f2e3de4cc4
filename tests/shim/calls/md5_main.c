/* md5_main: a program linked against a (fake) libcrypto.so.3 (built by tests/test_shim_calls.py
 * from two_openssl.c) that prints what EVP_md5 returns. */
#include <stdio.h>

const char *EVP_md5(void);

int main(void)
{
    printf("%s\n", EVP_md5());
    return 0;
}
