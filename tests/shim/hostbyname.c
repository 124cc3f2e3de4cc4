/* hostbyname: the older resolver calls, one line each: the function, 0 or the h_errno it left,
 * the errno it left (set to a marker before the call), then the addresses it returned.
 *   gethostbyname("localhost") twice, gethostbyname2("127.0.0.2", AF_INET),
 *   gethostbyname_r("127.0.0.3") first with a buffer too small (ERANGE, retried),
 *   gethostbyname2_r("::1", AF_INET6), gethostbyname("no such host") (fails).
 * The output, errno included, must not change under the shim. */
#include "tt_test.h"

#include <netdb.h>

static void show(const char *function, const struct hostent *he, int herr, int err)
{
    printf("%s %d %d", function, he != NULL ? 0 : herr, err);
    for (char **a = he != NULL ? he->h_addr_list : NULL; a != NULL && *a != NULL; a++) {
        char text[INET6_ADDRSTRLEN];
        if (inet_ntop(he->h_addrtype, *a, text, sizeof text) == NULL)
            die("inet_ntop");
        printf(" %s", text);
    }
    printf("\n");
}

int main(void)
{
    for (int i = 0; i < 2; i++) {
        errno = 41;
        struct hostent *he = gethostbyname("localhost");
        int err = errno;
        if (he == NULL)
            die("gethostbyname localhost");
        show("gethostbyname", he, h_errno, err);
    }

    errno = 42;
    struct hostent *he = gethostbyname2("127.0.0.2", AF_INET);
    int err = errno;
    if (he == NULL)
        die("gethostbyname2");
    show("gethostbyname2", he, h_errno, err);

    struct hostent buf_he, *result = NULL;
    char small[8], large[4096];
    int herr = 0;
    int rc = gethostbyname_r("127.0.0.3", &buf_he, small, sizeof small, &result, &herr);
    if (rc != ERANGE)
        die("gethostbyname_r with a small buffer returned %d", rc);
    errno = 43;
    rc = gethostbyname_r("127.0.0.3", &buf_he, large, sizeof large, &result, &herr);
    err = errno;
    if (rc != 0 || result == NULL)
        die("gethostbyname_r returned %d", rc);
    show("gethostbyname_r", result, herr, err);

    errno = 44;
    rc = gethostbyname2_r("::1", AF_INET6, &buf_he, large, sizeof large, &result, &herr);
    err = errno;
    if (rc != 0 || result == NULL)
        die("gethostbyname2_r returned %d", rc);
    show("gethostbyname2_r", result, herr, err);

    h_errno = 0;
    errno = 45;
    he = gethostbyname("no such host");
    err = errno;
    if (he != NULL || h_errno == 0)
        die("gethostbyname of a bad name succeeded");
    show("gethostbyname", he, h_errno, err);
    return 0;
}
