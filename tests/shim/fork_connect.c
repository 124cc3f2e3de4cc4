/* fork_connect IP PORT_A PORT_B: the parent connects to A, forks; the child connects to A and B
 * and exits; the parent waits, connects to A again and prints the child's pid. UDP throughout. */
#include "tt_test.h"

#include <sys/wait.h>

int main(int argc, char **argv)
{
    if (argc != 4)
        die("usage: fork_connect IP PORT_A PORT_B");
    struct sockaddr_in a = inet_addr_of(argv[1], argv[2]);
    struct sockaddr_in b = inet_addr_of(argv[1], argv[3]);
    if (connect_once(SOCK_DGRAM, &a) != 0)
        die("parent connect A");
    pid_t child = fork();
    if (child < 0)
        die("fork");
    if (child == 0) {
        if (connect_once(SOCK_DGRAM, &a) != 0 || connect_once(SOCK_DGRAM, &b) != 0)
            die("child connect");
        exit(0);
    }
    int status;
    if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        die("child failed");
    if (connect_once(SOCK_DGRAM, &a) != 0)
        die("parent connect A again");
    printf("%d\n", (int)child);
    return 0;
}
