/* Loaded modules by address: which program or shared library contains a return address.
 *
 * Two tables of executable segments and module paths, rebuilt with dl_iterate_phdr whenever the
 * loader's add/remove counters (dlpi_adds, dlpi_subs) differ from the ones the current table was
 * built at. A rebuild fills the table not in use and then publishes it; each table carries a
 * sequence number that is odd while it is being written, and a reader that saw it change retries
 * (a few times, then gives up and names no module). So readers never wait, never allocate, and a
 * signal handler interrupting a rebuild on its own thread reads the published table.
 *
 * dl_iterate_phdr takes the loader's write lock, which the loader holds only while it links or
 * unlinks a module (no user code runs under it) and which is recursive: a hook reached from a
 * library constructor during dlopen does not deadlock. Only first occurrences look modules up.
 *
 * Paths are the loader's names (the main program's is /proc/self/exe): a library opened through a
 * relative path or a symbolic link is named as it was opened.
 */
#include "shim.h"

#include <elf.h>
#include <link.h>

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
        ssize_t n = readlink("/proc/self/exe", dst, room);
        nlen = n > 0 ? (size_t)n : 0;
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

void shim_modules_refresh(void)
{
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
    for (int i = 0; i < 2; i++) {
        tables[i].valid = 0;
        tables[i].nsegs = 0;
        tables[i].seq = (tables[i].seq | 1) + 1; /* even: readers see an empty table */
    }
    __atomic_store_n(&building, 0, __ATOMIC_RELEASE);
}

size_t shim_module_of(const void *addr, char *out, size_t cap, uintptr_t *base)
{
    uintptr_t a = (uintptr_t)addr;
    *base = 0;
    shim_modules_refresh();
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
