/* errno_keep IP CLOSED_PORT OPEN_PORT: checks that errno behaves as without the shim: a refused
 * TCP connect fails with ECONNREFUSED (first time and repeated), and successful connect, bind and
 * listen leave errno untouched, in the process and in a fork child. Exits 1 and says what
 * differed. */
#include "tt_test.h"

#include <sys/wait.h>

static int failures;

static void expect(int cond, const char *what)
{
    if (!cond) {
        fprintf(stderr, "FAILED: %s\n", what);
        failures++;
    }
}

int main(int argc, char **argv)
{
    if (argc != 4)
        die("usage: errno_keep IP CLOSED_PORT OPEN_PORT");
    struct sockaddr_in closed = inet_addr_of(argv[1], argv[2]);
    struct sockaddr_in open_ = inet_addr_of(argv[1], argv[3]);

    for (int round = 0; round < 2; round++) { /* first occurrence, then a dedup hit */
        errno = 0;
        int ret = connect_once(SOCK_STREAM, &closed);
        expect(ret == -1 && errno == ECONNREFUSED, "refused connect keeps ECONNREFUSED");

        int fd = socket(AF_INET, SOCK_DGRAM, 0);
        errno = 12345;
        ret = connect(fd, (struct sockaddr *)&open_, sizeof open_);
        expect(ret == 0 && errno == 12345, "successful connect leaves errno untouched");
        close(fd);

        fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in any = inet_addr_of("127.0.0.1", "0");
        errno = 54321;
        ret = bind(fd, (struct sockaddr *)&any, sizeof any);
        expect(ret == 0 && errno == 54321, "successful bind leaves errno untouched");
        errno = 777;
        ret = listen(fd, 4);
        expect(ret == 0 && errno == 777, "successful listen leaves errno untouched");
        errno = 0;
        ret = bind(fd, (struct sockaddr *)&any, sizeof any);
        expect(ret == -1 && errno == EINVAL, "second bind keeps EINVAL");
        close(fd);

        errno = 0;
        ret = connect(-1, (struct sockaddr *)&open_, sizeof open_);
        expect(ret == -1 && errno == EBADF, "connect on a bad descriptor keeps EBADF");
        errno = 0;
        ret = execl("/nonexistent/program", "program", (char *)NULL);
        expect(ret == -1 && errno == ENOENT, "failed execl keeps ENOENT");
    }

    /* A fork child's first record makes the shim connect at once; whether that works or not, the
     * program's errno stays as it was. */
    pid_t child = fork();
    if (child == 0) {
        int fd = socket(AF_INET, SOCK_DGRAM, 0);
        errno = 4242;
        int ret = connect(fd, (struct sockaddr *)&open_, sizeof open_);
        expect(ret == 0 && errno == 4242, "successful connect in a fork child leaves errno untouched");
        exit(failures ? 1 : 0);
    }
    int status;
    expect(child > 0 && waitpid(child, &status, 0) == child && WIFEXITED(status) &&
               WEXITSTATUS(status) == 0,
           "fork child's checks");
    return failures ? 1 : 0;
}
