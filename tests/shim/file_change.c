/* file_change DIR: creates DIR/f, chmods it to 0600 (not reported) and then 0602 (world-write:
 * reported whatever the path), renames it to DIR/g and unlinks DIR/g (neither is a sensitive
 * path). Successful calls must leave errno untouched. */
#include "tt_test.h"

#include <fcntl.h>
#include <sys/stat.h>

int main(int argc, char **argv)
{
    if (argc != 2)
        die("usage: file_change DIR");
    char f[4096], g[4096];
    snprintf(f, sizeof f, "%s/f", argv[1]);
    snprintf(g, sizeof g, "%s/g", argv[1]);
    int fd = open(f, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0)
        die("open %s", f);
    close(fd);
    errno = 33;
    if (chmod(f, 0600) != 0 || errno != 33)
        die("chmod 0600");
    if (chmod(f, 0602) != 0 || errno != 33)
        die("chmod 0602");
    if (rename(f, g) != 0 || errno != 33)
        die("rename");
    if (unlink(g) != 0 || errno != 33)
        die("unlink");
    return 0;
}
