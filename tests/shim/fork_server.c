/* fork_server CONNECTIONS: a loopback TCP server that forks a child per accepted connection; each
 * child reads the client's line and answers with it in upper case and its connection number. A
 * client process (forked first) makes CONNECTIONS connections one after the other and prints
 * every answer; then the server prints how many children it reaped. Bounded by alarms and socket
 * timeouts. */
#include "tt_test.h"

#include <ctype.h>
#include <sys/time.h>
#include <sys/wait.h>

static void timeouts(int fd)
{
    struct timeval wait = {.tv_sec = 20};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof wait);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &wait, sizeof wait);
}

/* Reads until end of stream or `cap - 1` bytes; returns the length read. */
static size_t read_all(int fd, char *buf, size_t cap)
{
    size_t got = 0;
    ssize_t n;
    while (got + 1 < cap && (n = read(fd, buf + got, cap - 1 - got)) > 0)
        got += (size_t)n;
    buf[got] = '\0';
    return got;
}

static void serve(int fd, int number)
{
    char line[128], reply[192];
    timeouts(fd);
    size_t n = read_all(fd, line, sizeof line);
    for (size_t i = 0; i < n; i++)
        line[i] = (char)toupper((unsigned char)line[i]);
    int len = snprintf(reply, sizeof reply, "#%d %s", number, line);
    if (write(fd, reply, (size_t)len) != len)
        exit(3);
    close(fd);
}

static void client(const struct sockaddr_in *server, int connections)
{
    for (int i = 0; i < connections; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0 || connect(fd, (const struct sockaddr *)server, sizeof *server) != 0)
            die("client connect");
        timeouts(fd);
        char msg[64], reply[192];
        int len = snprintf(msg, sizeof msg, "hello %d\n", i);
        if (write(fd, msg, (size_t)len) != len || shutdown(fd, SHUT_WR) != 0)
            die("client write");
        read_all(fd, reply, sizeof reply);
        close(fd);
        printf("received: %s", reply);
    }
}

int main(int argc, char **argv)
{
    if (argc != 2)
        die("usage: fork_server CONNECTIONS");
    int connections = atoi(argv[1]);
    alarm(60);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in addr = inet_addr_of("127.0.0.1", "0");
    socklen_t alen = sizeof addr;
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(lfd, 16) != 0 ||
        getsockname(lfd, (struct sockaddr *)&addr, &alen) != 0)
        die("listener");
    timeouts(lfd);

    fflush(stdout);
    pid_t client_pid = fork();
    if (client_pid < 0)
        die("fork");
    if (client_pid == 0) {
        close(lfd);
        client(&addr, connections);
        exit(0);
    }

    for (int i = 0; i < connections; i++) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0)
            die("accept");
        pid_t child = fork();
        if (child < 0)
            die("fork");
        if (child == 0) {
            close(lfd);
            serve(fd, i);
            exit(0);
        }
        close(fd);
    }
    int reaped = 0, client_ok = 0, status;
    pid_t done;
    while ((done = waitpid(-1, &status, 0)) > 0) {
        int ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        if (done == client_pid)
            client_ok = ok;
        else
            reaped += ok;
    }
    if (!client_ok)
        die("client failed");
    printf("server reaped %d children\n", reaped);
    return 0;
}
