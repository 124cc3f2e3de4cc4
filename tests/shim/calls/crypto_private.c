/* crypto_private PLUGIN MODE: loads PLUGIN (crypto_plugin.c, linked against OpenSSL 3) with
 * dlopen(RTLD_NOW | RTLD_LOCAL), an absolute path or a bare name found in this program's run path,
 * so that its libcrypto is loaded privately; this program is not linked against OpenSSL. Then:
 *
 *   dlerror  a dlopen of a missing library leaves an error pending, the plugin makes its first
 *            EVP_md5 call, and the program prints the digest size and what dlerror() returns;
 *   fork     forks while another thread is inside dl_iterate_phdr, holding the loader's lock
 *            (glibc does not reset it in a fork child), and the child makes the plugin's first
 *            EVP_md5 call: prints the digest size it got, or "hung" when the child, given 5 s
 *            by an alarm, was killed waiting for the lock. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile int inside; /* 1 while the thread holds the loader's lock */
static volatile int stop;

static int hold(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)info;
    (void)size;
    (void)data;
    inside = 1;
    while (inside == 1 && !stop)
        usleep(1000);
    return 1;
}

static void *holder(void *arg)
{
    (void)arg;
    while (!stop)
        dl_iterate_phdr(hold, NULL);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 3)
        return 64;
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        fprintf(stderr, "%s\n", dlerror());
        return 2;
    }
    int (*plugin_md5)(void) = (int (*)(void))dlsym(h, "plugin_md5");
    if (plugin_md5 == NULL)
        return 2;
    if (strcmp(argv[2], "dlerror") == 0) {
        if (dlopen("libtelltale-no-such-library.so", RTLD_NOW) != NULL)
            return 2;
        int size = plugin_md5();
        const char *e = dlerror();
        printf("%d %s\n", size, e ? e : "(no error)");
        return 0;
    }
    if (strcmp(argv[2], "fork") != 0)
        return 64;
    pthread_t t;
    if (pthread_create(&t, NULL, holder, NULL) != 0)
        return 2;
    while (!inside)
        usleep(100);
    pid_t child = fork();
    if (child == 0) {
        alarm(5);
        printf("%d\n", plugin_md5());
        fflush(stdout);
        _exit(0);
    }
    inside = 2; /* let the thread go */
    int status = 0;
    if (child < 0 || waitpid(child, &status, 0) != child)
        return 2;
    stop = 1;
    pthread_join(t, NULL);
    if (WIFSIGNALED(status)) {
        printf("hung\n");
        return 1;
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
