/* Weak and strong OpenSSL uses from a program linked with libcrypto: EVP_md5, EVP_sha1 twice from
 * one site, MD5 (not hooked: not reported), a fetch of "md5", a fetch of "SHA256" (not weak), a
 * fetch of "SHA1" with a "-fips" property query (not for security), and 3DES. */
#include <openssl/evp.h>
#include <openssl/md5.h>
#include <stdio.h>

int main(void)
{
    unsigned char out[16];
    const EVP_MD *md5 = EVP_md5();
    for (volatile int i = 0; i < 2; i++) /* one call site, called twice */
        if (EVP_sha1() == NULL)
            return 1;
    MD5((const unsigned char *)"x", 1, out);
    EVP_MD *fetched = EVP_MD_fetch(NULL, "md5", NULL);
    EVP_MD *strong = EVP_MD_fetch(NULL, "SHA256", NULL);
    EVP_MD *nonsec = EVP_MD_fetch(NULL, "SHA1", "-fips");
    const EVP_CIPHER *des3 = EVP_des_ede3_cbc();
    if (md5 == NULL || fetched == NULL || strong == NULL || nonsec == NULL || des3 == NULL)
        return 1;
    EVP_MD_free(fetched);
    EVP_MD_free(strong);
    EVP_MD_free(nonsec);
    printf("ok\n");
    return 0;
}
