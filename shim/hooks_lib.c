/* Library loads: the shared objects loaded with the program (reported once at initialisation) and
 * those loaded later with dlopen / dlmopen.
 *
 *   LIBRARY_LOAD  PATH (absolute: a relative loader name is joined to the current directory),
 *                 LIB_FLAGS (AT_START, WRITABLE_DIR), REQUESTED (the name given to dlopen when it
 *                 differs from PATH), RESULT (the object a dlopen returned: 0; a failed dlopen: -1
 *                 and errno).
 *
 * New objects are found by walking dl_iterate_phdr and comparing with the objects already seen
 * (a fixed table of path hashes kept for the life of the image, fork children included, so each
 * library is reported once per process image). A dlopen also reports the dependencies it pulled
 * in. Libraries do not use the shared dedup table: a program with hundreds of libraries must not
 * crowd out other behaviours. A failed dlopen is deduplicated there as usual (by name).
 *
 * The loader resolves a bare name against the run paths of the *caller* of dlopen (its return
 * address), of the objects that loaded it and of the program, and loads into the caller's
 * namespace. A hook that calls dlopen itself becomes that caller, so the hook only calls through
 * when the result cannot depend on it: a name with a '/' and no "$", from a caller in the base
 * namespace (any namespace for dlmopen), even in an inert process, so that the OpenSSL functions
 * it may bring in are found right after it (hooks_crypto.c). Otherwise (every bare name) it jumps
 * straight to the real dlopen (a sibling call, so the loader still sees the program's caller) and
 * what was loaded is reported by the next walk: the next dlopen, or the end of the process.
 *
 * Environment: TELLTALE_START_LIBRARIES=0 leaves out the libraries loaded with the program (they
 * are still noted as seen, so only later loads are reported).
 */
#include "shim.h"
#include "calls.h"

#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/auxv.h>
#include <sys/stat.h>

SHIM_REAL(dlopen);
SHIM_REAL(dlmopen);

/* At initialisation (even inert): a dlsym at the first dlopen, once the program runs, would clear
 * its pending dlerror(). */
void hooks_lib_resolve(void)
{
    (void)SHIM_RESOLVE(dlopen);
    (void)SHIM_RESOLVE(dlmopen);
}

enum { LIB_SEEN_SLOTS = 1024 };

static uint64_t lib_seen[LIB_SEEN_SLOTS]; /* path hashes; 0 = empty; atomic */

_Static_assert((LIB_SEEN_SLOTS & (LIB_SEEN_SLOTS - 1)) == 0, "LIB_SEEN_SLOTS: a power of two");

/* 1 when `key` was not in the table (it is now), or the table is full (*full set). */
static int lib_first_sight(uint64_t key, int *full)
{
    unsigned i = (unsigned)key & (LIB_SEEN_SLOTS - 1);
    *full = 0;
    for (unsigned probe = 0; probe < LIB_SEEN_SLOTS; probe++) {
        uint64_t k = __atomic_load_n(&lib_seen[i], __ATOMIC_ACQUIRE);
        if (k == 0) {
            uint64_t expected = 0;
            if (__atomic_compare_exchange_n(&lib_seen[i], &expected, key, 0, __ATOMIC_ACQ_REL,
                                            __ATOMIC_ACQUIRE))
                return 1;
            k = expected;
        }
        if (k == key)
            return 0;
        i = (i + 1) & (LIB_SEEN_SLOTS - 1);
    }
    *full = 1;
    return 1;
}

/* 1 when the process's effective user or one of its groups can write directory `dir`, going by
 * its mode bits (ACLs are not read). A directory owned by root counts only through its group or
 * world bits: whoever can replace a library there is root already. */
static int dir_writable(const char *dir)
{
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return 0;
    if (st.st_mode & S_IWOTH)
        return 1;
    uid_t euid = geteuid();
    if ((st.st_mode & S_IWUSR) && st.st_uid == euid && euid != 0)
        return 1;
    if (!(st.st_mode & S_IWGRP) || st.st_gid == 0)
        return 0;
    if (st.st_gid == getegid())
        return 1;
    gid_t groups[64];
    int n = getgroups(64, groups); /* -1 with more than 64 groups: not counted */
    for (int i = 0; i < n; i++)
        if (groups[i] == st.st_gid)
            return 1;
    return 0;
}

/* Writes the absolute form of `name` into out (cap bytes): joined to the current directory when
 * relative, without "." components or doubled slashes ("..", which depends on symbolic links, is
 * kept). Returns its length, cut to cap. */
static size_t absolute_name(const char *name, char *out, size_t cap)
{
    size_t n = 0;
    if (name[0] != '/' && getcwd(out, cap) != NULL) {
        n = strlen(out);
        if (n > 0 && out[n - 1] != '/' && n < cap)
            out[n++] = '/';
    }
    for (const char *p = name; *p != '\0' && n < cap; p++) {
        int at_component = n == 0 || out[n - 1] == '/';
        if (at_component && *p == '/' && n > 0)
            continue; /* a doubled slash */
        if (at_component && p[0] == '.' && (p[1] == '/' || p[1] == '\0')) {
            if (p[1] == '/')
                p++;
            continue; /* a "." component */
        }
        out[n++] = *p;
    }
    return n;
}

/* Whether the directory of path[0..len) is writable (see dir_writable). */
static int parent_writable(const char *path, size_t len)
{
    char dir[PATH_FIELD_MAX + 1];
    size_t end = len;
    while (end > 0 && path[end - 1] != '/')
        end--;
    if (end == 0)
        return 0;
    if (end > 1)
        end--; /* drop the slash, but keep "/" itself */
    if (end > PATH_FIELD_MAX)
        return 0;
    memcpy(dir, path, end);
    dir[end] = '\0';
    return dir_writable(dir);
}

struct lib_event {
    const char *path; /* absolute */
    size_t path_len;
    const char *requested; /* NULL: no REQUESTED field */
    uint8_t lib_flags;
    int has_result;
    int32_t ret, err;
    unsigned flags;
};

static void lib_send(const struct lib_event *e, int pid, int slot)
{
    uint8_t buf[REC_HEADER_SIZE + 4 * 4 + 2 * PATH_FIELD_MAX + 1 + 8 + CALLER_FIELD];
    struct rec r;
    rec_begin(&r, buf, sizeof buf, KIND_LIBRARY_LOAD, pid);
    rec_add_flags(&r, e->flags);
    if (e->has_result) {
        int32_t result[2] = {e->ret, e->err};
        rec_put(&r, TAG_RESULT, result, sizeof result);
    }
    rec_put_u8(&r, TAG_LIB_FLAGS, e->lib_flags);
    rec_put_bytes(&r, TAG_PATH, e->path, e->path_len, PATH_FIELD_MAX);
    if (e->requested != NULL)
        rec_put_bytes(&r, TAG_REQUESTED, e->requested, strlen(e->requested), PATH_FIELD_MAX);
    report_first(buf, r.len, 0, slot);
}

/* ---- walking the loaded objects ---------------------------------------------------------------- */

static const char lib_marker; /* an address inside the shim, to recognise it */

/* The objects one pass of dl_iterate_phdr found not seen yet: their loader names and whether
 * each is the object a dlopen returned. The callback only copies (it runs under the loader's
 * lock: no system call, no report there); they are reported after dl_iterate_phdr returns. */
enum { WALK_BATCH = 16, WALK_NAMES = 4096, WALK_ROUNDS = 64 };

struct walk {
    const struct link_map *handle; /* the object the dlopen returned, or NULL */
    unsigned skip;                 /* objects of the list already handled by earlier passes */
    unsigned index;                /* position in the list */
    int full;                      /* the pass stopped early: another one follows */
    unsigned n;
    size_t names_used;
    struct {
        uint32_t off, len;
        int is_handle;
    } obj[WALK_BATCH];
    char names[WALK_NAMES];
};

static int contains(const struct dl_phdr_info *info, uintptr_t addr)
{
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        uintptr_t start = info->dlpi_addr + ph->p_vaddr;
        if (ph->p_type == PT_LOAD && addr - start < ph->p_memsz)
            return 1;
    }
    return 0;
}

static uint64_t lib_key(const char *path, size_t len)
{
    return hash_final(hash_mem((uint64_t)KIND_LIBRARY_LOAD << 32, path, len));
}

/* 1 when the absolute name `name` is in the table of objects seen (a lookup only). */
static int lib_seen_already(const char *name)
{
    char path[PATH_FIELD_MAX];
    size_t len = absolute_name(name, path, sizeof path); /* absolute: no getcwd */
    uint64_t key = lib_key(path, len);
    unsigned i = (unsigned)key & (LIB_SEEN_SLOTS - 1);
    for (unsigned probe = 0; probe < LIB_SEEN_SLOTS; probe++) {
        uint64_t k = __atomic_load_n(&lib_seen[i], __ATOMIC_ACQUIRE);
        if (k == key)
            return 1;
        if (k == 0)
            return 0;
        i = (i + 1) & (LIB_SEEN_SLOTS - 1);
    }
    return 0;
}

static int walk_one(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    struct walk *w = data;
    if (w->index++ < w->skip)
        return 0;
    const char *name = info->dlpi_name;
    if (name == NULL || name[0] == '\0')
        return 0; /* the program itself, reported by PROC_START */
    uintptr_t vdso = (uintptr_t)getauxval(AT_SYSINFO_EHDR);
    if (vdso != 0 && (info->dlpi_addr == vdso || contains(info, vdso)))
        return 0;
    if (contains(info, (uintptr_t)&lib_marker))
        return 0;
    if (name[0] == '/' && lib_seen_already(name))
        return 0;
    size_t len = strnlen(name, PATH_FIELD_MAX);
    if (w->n == WALK_BATCH || len > WALK_NAMES - w->names_used) {
        w->index--; /* this one goes first in the next pass */
        w->full = 1;
        return 1;
    }
    memcpy(w->names + w->names_used, name, len);
    w->obj[w->n].off = (uint32_t)w->names_used;
    w->obj[w->n].len = (uint32_t)len;
    w->obj[w->n].is_handle = w->handle != NULL && info->dlpi_addr == w->handle->l_addr &&
                             name == w->handle->l_name;
    w->n++;
    w->names_used += len;
    return 0;
}

/* Reports every loaded object not seen before. Called inside shim_enter. */
static void lib_walk(int at_start, int silent, const char *requested,
                     const struct link_map *handle)
{
    int cancel, pid;
    if (shim_foreign_process(&pid))
        return; /* a vfork child: the table is its parent's */
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel);
    struct walk w;
    w.handle = handle;
    w.skip = 0;
    for (int round = 0; round < WALK_ROUNDS; round++) {
        w.index = 0;
        w.full = 0;
        w.n = 0;
        w.names_used = 0;
        dl_iterate_phdr(walk_one, &w);
        for (unsigned i = 0; i < w.n; i++) {
            char name[PATH_FIELD_MAX + 1], path[PATH_FIELD_MAX];
            memcpy(name, w.names + w.obj[i].off, w.obj[i].len);
            name[w.obj[i].len] = '\0';
            size_t len = absolute_name(name, path, sizeof path);
            int full;
            if (!lib_first_sight(lib_key(path, len), &full) || silent)
                continue;
            struct lib_event e = {.path = path, .path_len = len,
                                  .flags = full ? FLAG_NODEDUP : 0};
            e.lib_flags = (uint8_t)((at_start ? LIB_AT_START : 0) |
                                    (parent_writable(path, len) ? LIB_WRITABLE_DIR : 0));
            if (w.obj[i].is_handle) {
                e.has_result = 1;
                if (requested != NULL &&
                    (strlen(requested) != len || memcmp(requested, path, len) != 0))
                    e.requested = requested;
            }
            lib_send(&e, pid, -1);
        }
        if (!w.full)
            break;
        w.skip = w.index;
    }
    shim_modules_refresh(); /* the fallback table of callers, outside the walk */
    pthread_setcancelstate(cancel, NULL);
}

/* A failed dlopen of `file`: deduplicated by name in the shared table. */
static void lib_failed(const char *file, int err)
{
    int cancel, pid, slot = -1;
    unsigned flags = 0;
    if (file == NULL || shim_foreign_process(&pid))
        return;
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel);
    size_t len = strnlen(file, PATH_FIELD_MAX);
    uint64_t key = hash_final(hash_mem(((uint64_t)KIND_LIBRARY_LOAD << 32) | 1, file, len));
    dedup_tick();
    int claim = dedup_hit(key) ? DEDUP_HIT : dedup_claim(key, &slot);
    if (claim != DEDUP_HIT) {
        if (claim == DEDUP_FULL)
            flags = FLAG_NODEDUP;
        struct lib_event e = {.path = file, .path_len = len, .has_result = 1, .ret = -1,
                              .err = err != 0 ? err : ENOENT, .flags = flags};
        if (memchr(file, '/', len) != NULL) {
            char path[PATH_FIELD_MAX];
            size_t plen = absolute_name(file, path, sizeof path);
            e.lib_flags = parent_writable(path, plen) ? LIB_WRITABLE_DIR : 0;
        }
        lib_send(&e, pid, slot);
    }
    pthread_setcancelstate(cancel, NULL);
}

/* ---- dlopen, dlmopen ----------------------------------------------------------------------------- */

/* 1 when calling the real dlopen from the shim gives the same result as from `caller`: the hook
 * then calls it itself, and runs lib_after. Checked in an inert process too (its OpenSSL slots are
 * filled after the call); not while the shim is busy on this thread (its own pinning dlopen, or a
 * signal handler or resolver within the shim's work), which goes straight through. */
static int lib_can_call_through(const char *file, const void *caller, int any_namespace)
{
    if (shim_busy && !shim_reclaim(__builtin_frame_address(0)))
        return 0;
    if (SHIM_UNLIKELY(__atomic_load_n(&shim_init_state, __ATOMIC_ACQUIRE) != INIT_DONE) &&
        !shim_init_lazy())
        return 0;
    int saved = errno, ok = 0;
    Dl_info info;
    struct link_map *lm = NULL;
    /* A bare name is searched in the DT_RPATH of the caller, of the objects that loaded it and of
     * the program, then in the caller's DT_RUNPATH: it always depends on the caller. A path is
     * not searched, but it is loaded into the caller's namespace. */
    if (file == NULL || strchr(file, '/') == NULL || strchr(file, '$') != NULL)
        goto out;
    if (dladdr1(caller, &info, (void **)&lm, RTLD_DL_LINKMAP) == 0 || lm == NULL)
        goto out;
    if (!any_namespace) {
        Lmid_t lmid;
        if (dlinfo(lm, RTLD_DI_LMID, &lmid) != 0 || lmid != LM_ID_BASE)
            goto out;
    }
    ok = 1;
out:
    errno = saved;
    return ok;
}

/* After a dlopen that the shim called: finds the OpenSSL functions it may have brought in (even
 * when inert: found now, not at a hook's call), then reports the result when active. */
static void lib_after(const char *file, void *handle, int err)
{
    if (handle != NULL)
        crypto_resolve_loaded();
    if (!shim_enter())
        return;
    if (handle == NULL) {
        lib_failed(file, err);
    } else {
        struct link_map *lm = NULL;
        if (file == NULL || dlinfo(handle, RTLD_DI_LINKMAP, &lm) != 0)
            lm = NULL;
        lib_walk(0, 0, file, lm);
    }
    shim_leave();
}

/* The pass-through must be a sibling call whatever CFLAGS say (GCC; clang makes it one when
 * optimising, and tests/test_shim_libmem.py checks a RUNPATH lookup through the shim). */
#if defined(__clang__)
#define SHIM_SIBCALL
#else
#define SHIM_SIBCALL __attribute__((optimize("O2", "optimize-sibling-calls")))
#endif

SHIM_EXPORT SHIM_SIBCALL void *dlopen(const char *file, int mode)
{
    SHIM_NOTE_CALLER();
    if (SHIM_UNLIKELY(!SHIM_RESOLVE(dlopen)))
        return NULL;
    crypto_note_dlopen();
    if (!lib_can_call_through(file, __builtin_return_address(0), 0))
        return real_dlopen(file, mode); /* sibling call: the loader sees the program's caller */
    void *handle = real_dlopen(file, mode);
    int err = errno;
    lib_after(file, handle, err);
    errno = err;
    return handle;
}

SHIM_EXPORT SHIM_SIBCALL void *dlmopen(Lmid_t lmid, const char *file, int mode)
{
    SHIM_NOTE_CALLER();
    if (SHIM_UNLIKELY(!SHIM_RESOLVE(dlmopen)))
        return NULL;
    crypto_note_dlopen();
    if (!lib_can_call_through(file, __builtin_return_address(0), 1))
        return real_dlmopen(lmid, file, mode);
    void *handle = real_dlmopen(lmid, file, mode);
    int err = errno;
    lib_after(file, handle, err);
    errno = err;
    return handle;
}

/* ---- start and end of the process ---------------------------------------------------------------- */

__attribute__((constructor)) static void lib_constructor(void)
{
    int saved = errno;
    if (!shim_busy && shim_init_lazy() && shim_enter()) {
        const char *inventory = getenv("TELLTALE_START_LIBRARIES");
        shim_caller = NULL; /* no call made these loads */
        lib_walk(1, inventory != NULL && strcmp(inventory, "0") == 0, NULL, NULL);
        shim_leave();
    }
    errno = saved;
}

/* Objects loaded by dlopen calls that were passed straight through, or by libc itself (name
 * service modules, iconv), and not reported by a later dlopen. */
__attribute__((destructor)) static void lib_destructor(void)
{
    int saved = errno;
    if (shim_enter()) {
        shim_caller = NULL; /* the caller of these loads is not known */
        lib_walk(0, 0, NULL, NULL);
        shim_leave();
    }
    errno = saved;
}
