/* file_open DIR MODE: MODE "open" opens /etc/hostname for reading twice with open(), then creates
 * DIR/plain (not a sensitive path); MODE "fopen" opens /etc/hostname with fopen(.., "r");
 * MODE "freopen" creates DIR/plain with fopen, then reopens the stream on /etc/hostname with
 * freopen(.., "re"). Successful calls must leave errno untouched. Prints the descriptor of the
 * first open of /etc/hostname. */
#include "tt_test.h"

#include <fcntl.h>

int main(int argc, char **argv)
{
    if (argc != 3)
        die("usage: file_open DIR open|fopen|freopen");
    if (strcmp(argv[2], "freopen") == 0) {
        char plain[4096];
        snprintf(plain, sizeof plain, "%s/plain", argv[1]);
        FILE *f = fopen(plain, "w");
        if (f == NULL)
            die("fopen %s", plain);
        errno = 46;
        f = freopen("/etc/hostname", "re", f);
        if (f == NULL || errno != 46)
            die("freopen");
        printf("%d\n", fileno(f));
        fclose(f);
        return 0;
    }
    if (strcmp(argv[2], "fopen") == 0) {
        errno = 44;
        FILE *f = fopen("/etc/hostname", "r");
        if (f == NULL || errno != 44)
            die("fopen");
        printf("%d\n", fileno(f));
        fclose(f);
        return 0;
    }
    int first = -1;
    for (int i = 0; i < 2; i++) {
        errno = 55;
        int fd = open("/etc/hostname", O_RDONLY | O_CLOEXEC);
        if (fd < 0 || errno != 55)
            die("open /etc/hostname");
        if (first < 0)
            first = fd;
        else
            close(fd);
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/plain", argv[1]);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0)
        die("open %s", path);
    close(fd);
    printf("%d\n", first);
    return 0;
}
