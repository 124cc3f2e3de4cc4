/* Symbol lookup in a loaded ELF object by reading its dynamic symbol table in memory: no loader
 * call, so no lock (a fork child may call it while another thread of its parent held the loader's
 * lock at fork), no dlerror() state touched, no allocation, no system call. The OpenSSL hooks
 * use it to find the functions they stand for (hooks_crypto.c).
 */
#include "calls.h"

#include <elf.h>
#include <link.h>

/* A d_ptr of the dynamic section: relocated in place (an address), or a link-time value to which
 * the load address is added (wrapping: an object loaded below its link address has a "negative"
 * base). Which one is decided like glibc does (shim_dynamic_relocated), never by comparing
 * values: when it relocates a dynamic section, it does DT_HASH, DT_STRTAB, DT_SYMTAB, DT_VERSYM and
 * DT_GNU_HASH (among others), never DT_VERDEF. */
static uintptr_t dyn_ptr(uintptr_t base, int relocated, ElfW(Addr) v)
{
    return relocated ? (uintptr_t)v : base + (uintptr_t)v;
}

#if __ELF_NATIVE_CLASS == 64
#define SYM_TYPE(info) ELF64_ST_TYPE(info)
#else
#define SYM_TYPE(info) ELF32_ST_TYPE(info)
#endif

static uint32_t gnu_hash(const char *s)
{
    uint32_t h = 5381;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        h = h * 33 + *p;
    return h;
}

struct dynamic {
    uintptr_t base;
    const ElfW(Sym) *symtab;
    const char *strtab;
    const uint32_t *gnu_hash;
    const uint32_t *sysv_hash;
    const ElfW(Half) *versym;
    const ElfW(Verdef) *verdef;
    size_t verdefnum;
};

/* 1 when symbol i is a definition of a function named `name` in version index `ndx` (0: the
 * object has no version information: any). */
static int sym_matches(const struct dynamic *d, uint32_t i, const char *name, unsigned ndx)
{
    const ElfW(Sym) *s = &d->symtab[i];
    if (s->st_shndx == SHN_UNDEF || s->st_value == 0 ||
        (SYM_TYPE(s->st_info) != STT_FUNC && SYM_TYPE(s->st_info) != STT_GNU_IFUNC))
        return 0;
    if (strcmp(d->strtab + s->st_name, name) != 0)
        return 0;
    return ndx == 0 || (d->versym[i] & 0x7fff) == ndx;
}

void *shim_elf_symbol(uintptr_t base, const void *dynamic, int relocated, const char *name,
                      const char *version)
{
    struct dynamic d = {.base = base};
    if (dynamic == NULL)
        return NULL;
    for (const ElfW(Dyn) *e = dynamic; e->d_tag != DT_NULL; e++) {
        switch (e->d_tag) {
        case DT_SYMTAB:
            d.symtab = (const ElfW(Sym) *)dyn_ptr(base, relocated, e->d_un.d_ptr);
            break;
        case DT_STRTAB:
            d.strtab = (const char *)dyn_ptr(base, relocated, e->d_un.d_ptr);
            break;
        case DT_GNU_HASH:
            d.gnu_hash = (const uint32_t *)dyn_ptr(base, relocated, e->d_un.d_ptr);
            break;
        case DT_HASH:
            d.sysv_hash = (const uint32_t *)dyn_ptr(base, relocated, e->d_un.d_ptr);
            break;
        case DT_VERSYM:
            d.versym = (const ElfW(Half) *)dyn_ptr(base, relocated, e->d_un.d_ptr);
            break;
        case DT_VERDEF:
            /* glibc never relocates this one */
            d.verdef = (const ElfW(Verdef) *)dyn_ptr(base, 0, e->d_un.d_ptr);
            break;
        case DT_VERDEFNUM:
            d.verdefnum = (size_t)e->d_un.d_val;
            break;
        default:
            break;
        }
    }
    if (d.symtab == NULL || d.strtab == NULL || (d.gnu_hash == NULL && d.sysv_hash == NULL))
        return NULL;

    /* The index of `version` among the object's version definitions. */
    unsigned ndx = 0;
    if (d.versym != NULL && version != NULL) {
        if (d.verdef == NULL)
            return NULL; /* versioned symbols, but not defining any version */
        const ElfW(Verdef) *v = d.verdef;
        for (size_t k = 0; k < d.verdefnum; k++) {
            const ElfW(Verdaux) *a = (const ElfW(Verdaux) *)((const char *)v + v->vd_aux);
            if (!(v->vd_flags & VER_FLG_BASE) && strcmp(d.strtab + a->vda_name, version) == 0) {
                ndx = v->vd_ndx;
                break;
            }
            if (v->vd_next == 0)
                break;
            v = (const ElfW(Verdef) *)((const char *)v + v->vd_next);
        }
        if (ndx == 0)
            return NULL;
    } else if (d.versym != NULL) {
        return NULL;
    }

    uint32_t found = 0;
    if (d.gnu_hash != NULL) {
        uint32_t nbuckets = d.gnu_hash[0], symoffset = d.gnu_hash[1], bloom_size = d.gnu_hash[2];
        const ElfW(Addr) *bloom = (const ElfW(Addr) *)(d.gnu_hash + 4);
        const uint32_t *buckets = (const uint32_t *)(bloom + bloom_size);
        const uint32_t *chain = buckets + nbuckets;
        if (nbuckets == 0)
            return NULL;
        /* A chain ends at a word with its low bit set; a malformed one without it is bounded by
         * the number of symbols (DT_HASH's count, or the room between the symbol and string tables). */
        uint32_t limit = symoffset + (1u << 20);
        if (d.sysv_hash != NULL)
            limit = d.sysv_hash[1];
        else if ((uintptr_t)d.strtab > (uintptr_t)d.symtab) /* .dynstr follows .dynsym */
            limit = (uint32_t)(((uintptr_t)d.strtab - (uintptr_t)d.symtab) / sizeof(ElfW(Sym)));
        uint32_t h = gnu_hash(name);
        for (uint32_t i = buckets[h % nbuckets]; i >= symoffset && i < limit; i++) {
            uint32_t c = chain[i - symoffset];
            if ((c | 1) == (h | 1) && sym_matches(&d, i, name, ndx)) {
                found = i;
                break;
            }
            if (c & 1)
                break;
        }
    } else {
        uint32_t nchain = d.sysv_hash[1];
        for (uint32_t i = 1; i < nchain; i++)
            if (sym_matches(&d, i, name, ndx)) {
                found = i;
                break;
            }
    }
    if (found == 0)
        return NULL;
    const ElfW(Sym) *s = &d.symtab[found];
    if (SYM_TYPE(s->st_info) == STT_GNU_IFUNC)
        return NULL; /* a resolver, not the function: OpenSSL has none */
    return (void *)(base + (uintptr_t)s->st_value);
}
