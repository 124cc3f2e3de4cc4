/* seccomp_lookup: installs a seccomp filter that kills the process on process_vm_readv (as
 * systemd's SystemCallFilter=@system-service does, default action kill), then looks up
 * "localhost" with getaddrinfo three times, from two depths. Run with a fake name service
 * library preloaded after the shim (tests/shim/libs/fake_resolver.c), whose lookup makes hooked
 * calls (socket, connect, close) while the shim's lookup hook holds the guard. Prints "resolved"
 * and exits 0; dies with SIGSYS if the shim makes the forbidden call. */
#include "tt_test.h"

#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <netdb.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

static __attribute__((noinline)) int lookup(void)
{
    struct addrinfo *res = NULL;
    int rc = getaddrinfo("localhost", "80", NULL, &res);
    if (rc == 0)
        freeaddrinfo(res);
    return rc;
}

static __attribute__((noinline)) int lookup_deeper(void)
{
    volatile char pad[4096];
    for (size_t i = 0; i < sizeof pad; i++)
        pad[i] = (char)i;
    return lookup() + pad[0] * 0;
}

int main(void)
{
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_process_vm_readv, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {.len = sizeof f / sizeof f[0], .filter = f};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
        prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0)
        die("seccomp");
    if (lookup() != 0 || lookup_deeper() != 0 || lookup() != 0)
        die("getaddrinfo");
    puts("resolved");
    return 0;
}
