/* What PROC_START carries beyond shim.c's fields:
 *
 *   CAPABILITIES     the process's effective, permitted and inheritable capability sets (capget).
 *   LD_PRELOAD       the LD_PRELOAD entries other than the shim itself (the same file, by device
 *                    and inode, or by the name the loader recorded for it), each followed by a
 *                    NUL; split like the loader does, at spaces and colons. Left out when none.
 *   LD_LIBRARY_PATH  the LD_LIBRARY_PATH value verbatim (empty entries name the current
 *                    directory); left out when unset or empty, which the loader ignores.
 *
 * Both variables are read once, as the image started (the first PROC_START), so a fork child
 * reports what its image was started with.
 */
#include "shim.h"

#include <dlfcn.h>
#include <linux/capability.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/syscall.h>

enum { LD_FIELD_MAX = 1024 };

static char preload[LD_FIELD_MAX];
static size_t preload_len;
static int preload_cut;
static char libpath[LD_FIELD_MAX];
static size_t libpath_len;
static int libpath_set, libpath_cut;
static int env_read; /* atomic */

static const char self_marker;

/* 1 when `entry` (a NUL-terminated LD_PRELOAD entry) names the shim itself. */
static int is_self(const char *entry, const char *self, const struct stat *self_st)
{
    if (self != NULL && strcmp(entry, self) == 0)
        return 1;
    struct stat st;
    return self_st != NULL && stat(entry, &st) == 0 && st.st_dev == self_st->st_dev &&
           st.st_ino == self_st->st_ino;
}

static void read_env(void)
{
    Dl_info info;
    const char *self = NULL;
    struct stat self_st;
    int have_st = 0;
    if (dladdr(&self_marker, &info) != 0 && info.dli_fname != NULL) {
        self = info.dli_fname;
        have_st = stat(self, &self_st) == 0;
    }
    const char *v = getenv("LD_PRELOAD");
    for (const char *p = v; p != NULL && *p != '\0';) {
        size_t n = strcspn(p, " :");
        if (n > 0 && n < PATH_FIELD_MAX) {
            char entry[PATH_FIELD_MAX];
            memcpy(entry, p, n);
            entry[n] = '\0';
            if (!is_self(entry, self, have_st ? &self_st : NULL)) {
                if (preload_len + n + 1 <= sizeof preload) {
                    memcpy(preload + preload_len, entry, n + 1);
                    preload_len += n + 1;
                } else {
                    preload_cut = 1;
                }
            }
        } else if (n > 0) {
            preload_cut = 1;
        }
        p += n;
        if (*p != '\0')
            p++;
    }
    v = getenv("LD_LIBRARY_PATH");
    if (v != NULL && *v != '\0') {
        size_t n = strlen(v);
        if (n > sizeof libpath) {
            n = sizeof libpath;
            libpath_cut = 1;
        }
        memcpy(libpath, v, n);
        libpath_len = n;
        libpath_set = 1;
    }
}

void procinfo_put_start(struct rec *r)
{
    struct __user_cap_header_struct header = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct data[2];
    if (syscall(SYS_capget, &header, data) == 0) {
        uint64_t caps[3] = {
            (uint64_t)data[0].effective | (uint64_t)data[1].effective << 32,
            (uint64_t)data[0].permitted | (uint64_t)data[1].permitted << 32,
            (uint64_t)data[0].inheritable | (uint64_t)data[1].inheritable << 32,
        };
        rec_put(r, TAG_CAPABILITIES, caps, sizeof caps);
    }
    if (!__atomic_load_n(&env_read, __ATOMIC_ACQUIRE)) {
        read_env();
        __atomic_store_n(&env_read, 1, __ATOMIC_RELEASE);
    }
    if (preload_len > 0)
        rec_put_bytes(r, TAG_LD_PRELOAD, preload, preload_len, LD_FIELD_MAX);
    if (libpath_set)
        rec_put_bytes(r, TAG_LD_LIBRARY_PATH, libpath, libpath_len, LD_FIELD_MAX);
    if (preload_cut || libpath_cut)
        rec_add_flags(r, FLAG_TRUNCATED);
}
