/* priv_creds: as root, changes ids to what they already are: setresuid(-1, 0, -1) twice, seteuid(0),
 * setresgid(-1, 0, -1), setgid(0) and setgroups({0, 0}). Each must succeed and leave errno untouched;
 * exits 1 and says what differed. */
#include "tt_test.h"

#include <grp.h>

static int failures;

static void expect(int cond, const char *what)
{
    if (!cond) {
        fprintf(stderr, "FAILED: %s\n", what);
        failures++;
    }
}

int main(void)
{
    for (int i = 0; i < 2; i++) {
        errno = 4321;
        expect(setresuid(-1, 0, -1) == 0 && errno == 4321, "setresuid succeeds, errno untouched");
    }
    errno = 11;
    expect(seteuid(0) == 0 && errno == 11, "seteuid");
    errno = 12;
    expect(setresgid(-1, 0, -1) == 0 && errno == 12, "setresgid");
    errno = 13;
    expect(setgid(0) == 0 && errno == 13, "setgid");
    gid_t groups[2] = {0, 0};
    errno = 14;
    expect(setgroups(2, groups) == 0 && errno == 14, "setgroups");
    return failures ? 1 : 0;
}
