/* A plugin linked against OpenSSL 3 (built by tests/test_shim_calls.py as libttcrypto.so and loaded
 * privately, without RTLD_GLOBAL, by crypto_private.c): plugin_md5() returns the size of the
 * digest EVP_md5() gives, 16, or -1 when it gives none. */
#include <openssl/evp.h>

int plugin_md5(void)
{
    const EVP_MD *md = EVP_md5();
    return md != NULL ? EVP_MD_get_size(md) : -1;
}
