/* elfsym_chain: built with shim/elfsym.c (tests/test_shim_calls.py). A synthetic dynamic section
 * whose GNU hash chain lacks its end bit, the table ending where an inaccessible page begins:
 * looking up a name it does not define must stop at the last symbol instead of reading on (a
 * fault). Prints "absent" and exits 0. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <elf.h>
#include <link.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

void *shim_elf_symbol(uintptr_t base, const void *dynamic, int relocated, const char *name,
                      const char *version);

static uint32_t gnu_hash(const char *s)
{
    uint32_t h = 5381;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        h = h * 33 + *p;
    return h;
}

int main(void)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    char *mem = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED || mprotect(mem + page, page, PROT_NONE) != 0)
        return 2;
    /* symtab: the null symbol, foo, bar (functions, defined); strtab right after it. */
    ElfW(Sym) *sym = (ElfW(Sym) *)mem;
    char *str = (char *)(sym + 3);
    memcpy(str, "\0foo\0bar", 9);
    sym[1].st_name = 1;
    sym[2].st_name = 5;
    for (int i = 1; i < 3; i++) {
        sym[i].st_info = ELF64_ST_INFO(STB_GLOBAL, STT_FUNC);
        sym[i].st_shndx = 1;
        sym[i].st_value = 0x1000;
    }
    /* GNU hash: one bucket, symoffset 1, one bloom word (all ones), then the chain of foo and bar,
     * neither with its end bit, ending at the inaccessible page. */
    uint32_t *gh = (uint32_t *)(mem + page - (4 * 4 + 8 + 4 + 2 * 4));
    gh[0] = 1;
    gh[1] = 1;
    gh[2] = 1;
    gh[3] = 0;
    memset(gh + 4, 0xff, 8);
    gh[6] = 1;
    gh[7] = gnu_hash("foo") & ~1u;
    gh[8] = gnu_hash("bar") & ~1u;
    ElfW(Dyn) dyn[] = {
        {.d_tag = DT_SYMTAB, .d_un.d_ptr = (uintptr_t)sym},
        {.d_tag = DT_STRTAB, .d_un.d_ptr = (uintptr_t)str},
        {.d_tag = DT_GNU_HASH, .d_un.d_ptr = (uintptr_t)gh},
        {.d_tag = DT_NULL},
    };
    if (shim_elf_symbol(0, dyn, 1, "bar", NULL) != (void *)0x1000)
        return 3; /* the table is read as meant */
    if (shim_elf_symbol(0, dyn, 1, "baz", NULL) != NULL)
        return 4;
    puts("absent");
    return 0;
}
