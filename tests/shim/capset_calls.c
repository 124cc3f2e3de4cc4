/* capset: sets the process's own capability sets again (twice), then asks with an unknown header
 * version, which fails with EINVAL. Prints the effective, permitted and inheritable sets. */
#include "tt_test.h"

#include <linux/capability.h>
#include <stdint.h>
#include <sys/syscall.h>

int capset(cap_user_header_t header, const cap_user_data_t data);

int main(void)
{
    struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct d[2];
    if (syscall(SYS_capget, &h, d) != 0)
        die("capget");
    for (int i = 0; i < 2; i++)
        if (capset(&h, d) != 0)
            die("capset");
    struct __user_cap_header_struct bad = {.version = 0x12345678, .pid = 0};
    errno = 0;
    if (capset(&bad, d) != -1 || errno != EINVAL)
        die("capset with an unknown version did not fail with EINVAL");
    printf("%llu %llu %llu\n",
           (unsigned long long)((uint64_t)d[0].effective | (uint64_t)d[1].effective << 32),
           (unsigned long long)((uint64_t)d[0].permitted | (uint64_t)d[1].permitted << 32),
           (unsigned long long)((uint64_t)d[0].inheritable | (uint64_t)d[1].inheritable << 32));
    return 0;
}
