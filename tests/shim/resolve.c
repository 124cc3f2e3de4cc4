/* resolve NAME COUNT: COUNT getaddrinfo lookups of NAME; prints each distinct address once. */
#include "tt_test.h"

#include <netdb.h>

int main(int argc, char **argv)
{
    if (argc != 3)
        die("usage: resolve NAME COUNT");
    int n = atoi(argv[2]);
    for (int i = 0; i < n; i++) {
        struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
        struct addrinfo *res = NULL;
        int rc = getaddrinfo(argv[1], "80", &hints, &res);
        if (rc != 0) {
            fprintf(stderr, "getaddrinfo: %s\n", gai_strerror(rc));
            return 3;
        }
        for (struct addrinfo *ai = res; ai != NULL && i == 0; ai = ai->ai_next) {
            char text[INET6_ADDRSTRLEN];
            const void *src = ai->ai_family == AF_INET
                                  ? (const void *)&((struct sockaddr_in *)ai->ai_addr)->sin_addr
                                  : (const void *)&((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr;
            if (inet_ntop(ai->ai_family, src, text, sizeof text) != NULL)
                printf("%s\n", text);
        }
        freeaddrinfo(res);
    }
    return 0;
}
