/* Stands for a name service module (nss_mdns, nss_resolve, sss) that makes ordinary libc calls
 * during a lookup: preloaded after the shim (built by tests/test_shim.py), its getaddrinfo is the
 * shim's real one; it opens a unix socket, tries to connect it to a path nobody listens on, closes
 * it (each a hooked call made within the lookup), then calls the next getaddrinfo. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netdb.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

typedef int (*getaddrinfo_fn)(const char *, const char *, const struct addrinfo *,
                              struct addrinfo **);

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res)
{
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd >= 0) {
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        strcpy(a.sun_path, "/nonexistent/telltale-fake-resolver");
        (void)connect(fd, (struct sockaddr *)&a, sizeof a);
        close(fd);
    }
    getaddrinfo_fn next = (getaddrinfo_fn)dlsym(RTLD_NEXT, "getaddrinfo");
    return next != NULL ? next(node, service, hints, res) : EAI_SYSTEM;
}
