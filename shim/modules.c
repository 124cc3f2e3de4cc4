/* Loaded modules by address: which program or shared library contains a return address.
 *
 * With glibc 2.35 or later a lookup is _dl_find_object, which takes no lock, allocates nothing and
 * may be called from a signal handler or a fork child: the module's link map gives its load address
 * and its name (empty for the main program, named by /proc/self/exe, read once per image, at its
 * first lookup). The function is found with dlvsym once, by a constructor, so that the shim still
 * loads where it is missing.
 *
 * Without it, lookups read a table of executable segments and module paths built with
 * dl_iterate_phdr. dl_iterate_phdr holds the loader's write lock while its callback runs (any
 * thread's: an unwinder's, a library's), and fork does not reset that lock in the child (glibc 2.36
 * resets only the loader's main lock): a child forked while another thread held it would wait
 * forever for it. So a lookup never rebuilds the table; shim_modules_refresh does, called at
 * initialisation and by the library walk (the start of the process, a dlopen, the end), and never
 * in a fork child. Modules loaded since the last refresh are not named. There are two tables: a
 * refresh fills the one not in use and then publishes it; each carries a sequence number that is
 * odd while it is being written, and a reader that saw it change retries (a few times, then gives
 * up and names no module). A fork child keeps the published table and drops only one whose
 * rebuild another thread had begun.
 *
 * Paths are the loader's names (the main program's is /proc/self/exe): a library opened through a
 * relative path or a symbolic link is named as it was opened.
 */
#include "shim.h"

#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <pthread.h>

enum { MOD_SEGS = 1024, MOD_NAMES = 65536 };

struct mod_seg {
    uintptr_t lo, hi; /* [lo, hi): an executable PT_LOAD segment */
    uintptr_t base;   /* load address of its module */
    uint32_t name_off;
    uint32_t name_len;
};

struct mod_table {
    uint32_t seq; /* odd while being written; atomic */
    uint32_t nsegs;
    uint32_t names_used;
    int valid;
    unsigned long long adds, subs;
    struct mod_seg seg[MOD_SEGS];
    char names[MOD_NAMES];
};

static struct mod_table tables[2];
static int current;  /* index of the published table; atomic */
static int building; /* 1 while a thread rebuilds; atomic */

static size_t main_program(char *out, size_t cap);

struct counters {
    unsigned long long adds, subs;
};

static int read_counters(struct dl_phdr_info *info, size_t size, void *data)
{
    struct counters *c = data;
    if (size >= offsetof(struct dl_phdr_info, dlpi_subs) + sizeof info->dlpi_subs) {
        c->adds = info->dlpi_adds;
        c->subs = info->dlpi_subs;
    }
    return 1; /* the counters are the same in every callback: stop at the first */
}

static int add_module(struct dl_phdr_info *info, size_t size, void *data)
{
    struct mod_table *t = data;
    (void)size;
    if (t->nsegs == 0 && t->names_used == 0) { /* the first module of the list */
        t->adds = info->dlpi_adds;
        t->subs = info->dlpi_subs;
    }
    const char *name = info->dlpi_name;
    size_t nlen = name ? strlen(name) : 0;
    uint32_t off = t->names_used;
    char *dst = t->names + off;
    size_t room = MOD_NAMES - off;
    if (nlen == 0) { /* the main program */
        nlen = main_program(dst, room);
    } else {
        if (nlen > room)
            nlen = room;
        memcpy(dst, name, nlen);
    }
    int used = 0;
    for (int i = 0; i < info->dlpi_phnum && t->nsegs < MOD_SEGS; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_X))
            continue;
        struct mod_seg *s = &t->seg[t->nsegs++];
        s->lo = info->dlpi_addr + ph->p_vaddr;
        s->hi = s->lo + ph->p_memsz;
        s->base = info->dlpi_addr;
        s->name_off = off;
        s->name_len = (uint32_t)nlen;
        used = 1;
    }
    if (used)
        t->names_used += (uint32_t)nlen;
    return 0;
}

typedef int (*find_object_fn)(void *, struct dl_find_object *);
static find_object_fn find_object; /* _dl_find_object, NULL before glibc 2.35; atomic */
static int find_object_known;      /* 1 once the constructor looked it up; atomic */
static int forked;                 /* 1 in a fork child: the loader's lock may be held for good */

/* The main program's path, read once per image: 0 unread, 1 being read, 2 read; atomic. */
static int exe_state;
static size_t exe_len;
static char exe_path[PATH_FIELD_MAX + 1];

/* Copies the main program's path, cut to cap bytes, into out; returns its length. */
static size_t main_program(char *out, size_t cap)
{
    int state = __atomic_load_n(&exe_state, __ATOMIC_ACQUIRE);
    int unread = 0;
    if (state != 2 && __atomic_compare_exchange_n(&exe_state, &unread, 1, 0, __ATOMIC_ACQ_REL,
                                                  __ATOMIC_ACQUIRE)) {
        ssize_t n = readlink("/proc/self/exe", exe_path, sizeof exe_path);
        exe_len = n > 0 ? (size_t)n : 0;
        __atomic_store_n(&exe_state, 2, __ATOMIC_RELEASE);
        state = 2;
    }
    if (state != 2) { /* another thread (or the code this handler interrupted) is reading it */
        ssize_t n = readlink("/proc/self/exe", out, cap);
        return n > 0 ? (size_t)n : 0;
    }
    size_t n = exe_len < cap ? exe_len : cap;
    memcpy(out, exe_path, n);
    return n;
}

int shim_dynamic_relocated(const void *dynamic)
{
    find_object_fn find = __atomic_load_n(&find_object, __ATOMIC_ACQUIRE);
    if (find == NULL && !__atomic_load_n(&find_object_known, __ATOMIC_ACQUIRE))
        find = (find_object_fn)dlvsym(RTLD_DEFAULT, "_dl_find_object", "GLIBC_2.35"); /* before
        our constructor: the caller is making loader calls already */
    struct dl_find_object fo;
    if (find == NULL)
        return 1; /* glibc before 2.35 relocates in place wherever it can write (x86, arm) */
    if (find((void *)dynamic, &fo) != 0 || fo.dlfo_map_start == NULL)
        return 1;
    /* The ELF header begins the first page of the object's mapping (its first segment maps file
     * offset 0); its program headers are read there only when they lie within that page. */
    const ElfW(Ehdr) *eh = (const ElfW(Ehdr) *)fo.dlfo_map_start;
    if (memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0 || eh->e_phentsize != sizeof(ElfW(Phdr)) ||
        eh->e_phoff + (size_t)eh->e_phnum * sizeof(ElfW(Phdr)) > 4096)
        return 1;
    const ElfW(Phdr) *ph = (const ElfW(Phdr) *)((const char *)eh + eh->e_phoff);
    for (unsigned i = 0; i < eh->e_phnum; i++)
        if (ph[i].p_type == PT_DYNAMIC)
            return (ph[i].p_flags & PF_W) != 0;
    return 1;
}

static void modules_atfork_child(void)
{
    __atomic_store_n(&forked, 1, __ATOMIC_RELAXED);
}

__attribute__((constructor)) static void modules_constructor(void)
{
    int saved = errno;
    void *f = dlvsym(RTLD_DEFAULT, "_dl_find_object", "GLIBC_2.35");
    __atomic_store_n(&find_object, (find_object_fn)f, __ATOMIC_RELEASE);
    __atomic_store_n(&find_object_known, 1, __ATOMIC_RELEASE);
    if (f == NULL && pthread_atfork(NULL, NULL, modules_atfork_child) != 0)
        __atomic_store_n(&forked, 1, __ATOMIC_RELAXED); /* no refresh that could hang */
    errno = saved;
}

void shim_modules_refresh(void)
{
    if (__atomic_load_n(&find_object, __ATOMIC_ACQUIRE) != NULL ||
        __atomic_load_n(&forked, __ATOMIC_RELAXED))
        return; /* no table needed; or a fork child, where dl_iterate_phdr may never return */
    struct counters now = {0, 0};
    int saved = errno;
    dl_iterate_phdr(read_counters, &now);
    int cur = __atomic_load_n(&current, __ATOMIC_ACQUIRE);
    const struct mod_table *pub = &tables[cur];
    if (pub->valid && pub->adds == now.adds && pub->subs == now.subs) {
        errno = saved;
        return;
    }
    int idle = 0;
    if (!__atomic_compare_exchange_n(&building, &idle, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
        errno = saved;
        return; /* another thread rebuilds; readers use the published table meanwhile */
    }
    struct mod_table *t = &tables[cur ^ 1];
    __atomic_store_n(&t->seq, t->seq + 1, __ATOMIC_RELAXED); /* odd: being written */
    __atomic_thread_fence(__ATOMIC_RELEASE);
    t->nsegs = 0;
    t->names_used = 0;
    dl_iterate_phdr(add_module, t);
    t->valid = 1;
    __atomic_store_n(&t->seq, t->seq + 1, __ATOMIC_RELEASE); /* even: complete */
    __atomic_store_n(&current, cur ^ 1, __ATOMIC_RELEASE);
    __atomic_store_n(&building, 0, __ATOMIC_RELEASE);
    errno = saved;
}

void shim_modules_reset(void)
{
    /* The published table stays: the child has the same modules. A rebuild another thread had
     * begun never finishes here: its table is emptied and left unpublished. */
    if (__atomic_load_n(&building, __ATOMIC_ACQUIRE)) {
        struct mod_table *t = &tables[__atomic_load_n(&current, __ATOMIC_ACQUIRE) ^ 1];
        t->valid = 0;
        t->nsegs = 0;
        t->names_used = 0;
        __atomic_store_n(&t->seq, (t->seq | 1) + 1, __ATOMIC_RELEASE); /* even, empty */
        __atomic_store_n(&building, 0, __ATOMIC_RELEASE);
    }
}

size_t shim_module_of(const void *addr, char *out, size_t cap, uintptr_t *base)
{
    uintptr_t a = (uintptr_t)addr;
    *base = 0;
    find_object_fn find = __atomic_load_n(&find_object, __ATOMIC_ACQUIRE);
    if (find != NULL) {
        struct dl_find_object fo;
        if (find((void *)addr, &fo) != 0 || fo.dlfo_link_map == NULL)
            return 0;
        const struct link_map *lm = fo.dlfo_link_map;
        size_t n;
        if (lm->l_name == NULL || lm->l_name[0] == '\0') {
            n = main_program(out, cap);
        } else {
            n = strnlen(lm->l_name, cap);
            memcpy(out, lm->l_name, n);
        }
        *base = (uintptr_t)lm->l_addr;
        return n;
    }
    for (int attempt = 0; attempt < 4; attempt++) {
        const struct mod_table *t = &tables[__atomic_load_n(&current, __ATOMIC_ACQUIRE)];
        uint32_t seq = __atomic_load_n(&t->seq, __ATOMIC_ACQUIRE);
        if (seq & 1)
            continue;
        size_t n = 0;
        uintptr_t b = 0;
        uint32_t nsegs = t->nsegs < MOD_SEGS ? t->nsegs : MOD_SEGS;
        for (uint32_t i = 0; i < nsegs; i++) {
            const struct mod_seg *s = &t->seg[i];
            if (a < s->lo || a >= s->hi)
                continue;
            n = s->name_len < cap ? s->name_len : cap;
            if (s->name_off > MOD_NAMES || n > MOD_NAMES - s->name_off)
                n = 0; /* torn read: the check below retries */
            memcpy(out, t->names + s->name_off, n);
            b = s->base;
            break;
        }
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(&t->seq, __ATOMIC_RELAXED) == seq) {
            *base = b;
            return n;
        }
    }
    return 0;
}
