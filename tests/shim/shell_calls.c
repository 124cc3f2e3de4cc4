/* system("exit 3") twice, then popen("echo popen-ran") read to the end; prints system's exit
 * status and what popen read. */
#include "tt_test.h"

#include <sys/wait.h>

int main(void)
{
    int status = 0;
    for (int i = 0; i < 2; i++) {
        status = system("exit 3");
        if (status == -1 || !WIFEXITED(status))
            die("system");
    }
    FILE *p = popen("echo popen-ran", "r");
    if (p == NULL)
        die("popen");
    char line[64] = "";
    if (fgets(line, sizeof line, p) == NULL)
        die("fgets");
    if (pclose(p) != 0)
        die("pclose");
    printf("%d %s", WEXITSTATUS(status), line);
    return 0;
}
