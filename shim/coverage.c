/* Coverage self-audit: before an exec or a spawn, a cheap look at the program about to run tells
 * whether the shim will observe it, and a COVERAGE_GAP record says so when it will not.
 *
 * - The ELF header and program headers (one open, a few preads, close): no PT_INTERP means no
 *   dynamic loader, so LD_PRELOAD never applies (static binaries, static-pie); a Go build-id note
 *   (name "Go", type 4) in a PT_NOTE segment marks a Go program, whose system calls bypass libc.
 *   The dynamic loader itself (run directly) has no PT_INTERP either and is not a gap.
 * - Secure execution (AT_SECURE), in which the loader ignores LD_PRELOAD: a set-user-ID bit that
 *   makes the effective user differ from the real one, a set-group-ID bit (with group execute)
 *   that makes the effective group differ from the real one, or file capabilities
 *   (security.capability) for a caller whose real user is not root. Set-id bits and capabilities
 *   are ignored on a nosuid mount and under no_new_privs, as the kernel ignores them. Root running
 *   a set-user-ID-root program is therefore not a gap: the kernel does not make that exec secure.
 *
 * The target is resolved as the exec will resolve it: relative to the directory descriptor, or for
 * execvp, execvpe, execlp and posix_spawnp a name without '/' searched in the caller's PATH (the
 * first executable regular file, as glibc does). Scripts, targets that cannot be read, and paths
 * longer than PATH_FIELD_MAX are not inspected. Everything runs on the stack with system calls
 * only, so a vfork child may run it.
 *
 * One record per distinct target path and reasons per process (dedup table); a process sharing its
 * parent's memory sends it undeduplicated, as for exec records.
 */
#include "coverage.h"

#include <elf.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/xattr.h>

enum {
    GO_NOTE_TYPE = 4,  /* ELF_NOTE_GOBUILDID_TAG */
    MAX_PHDRS = 512,   /* programs with more program headers are not inspected */
    NOTE_READ = 512,   /* bytes of each PT_NOTE segment looked at */
    GAP_REC_MAX = REC_HEADER_SIZE + 4 + PATH_FIELD_MAX + 8 + 5 + 64 + CALLER_FIELD,
};

/* Reads exactly n bytes at off; 0 on success. */
static int read_at(int fd, void *buf, size_t n, off_t off)
{
    ssize_t got = pread(fd, buf, n, off);
    return got == (ssize_t)n ? 0 : -1;
}

/* 1 when a PT_NOTE segment at off (size bytes, alignment align) holds Go's build-id note. */
static int has_go_note(int fd, uint64_t off, uint64_t size, uint64_t align)
{
    unsigned char buf[NOTE_READ];
    size_t n = size < sizeof buf ? (size_t)size : sizeof buf;
    ssize_t got = pread(fd, buf, n, (off_t)off);
    if (got <= 0)
        return 0;
    size_t len = (size_t)got, at = 0, pad = align == 8 ? 8 : 4;
    while (at + 12 <= len) {
        uint32_t namesz, descsz, type;
        memcpy(&namesz, buf + at, 4);
        memcpy(&descsz, buf + at + 4, 4);
        memcpy(&type, buf + at + 8, 4);
        at += 12;
        if (namesz > len - at)
            break;
        if (type == GO_NOTE_TYPE && namesz >= 3 && memcmp(buf + at, "Go\0", 3) == 0)
            return 1;
        size_t next = at + (((size_t)namesz + pad - 1) & ~(pad - 1));
        if (descsz > len || next + descsz > len)
            break;
        at = next + (((size_t)descsz + pad - 1) & ~(pad - 1));
    }
    return 0;
}

/* GAP_STATIC and GAP_GO from the ELF headers of the file open on fd; 0 for anything else. */
static unsigned elf_reasons(int fd)
{
    union {
        Elf64_Ehdr e64;
        Elf32_Ehdr e32;
    } eh;
    if (read_at(fd, &eh, sizeof eh.e32, 0) != 0 || memcmp(eh.e32.e_ident, ELFMAG, SELFMAG) != 0)
        return 0;
    int is64 = eh.e32.e_ident[EI_CLASS] == ELFCLASS64;
    if (!is64 && eh.e32.e_ident[EI_CLASS] != ELFCLASS32)
        return 0;
    if (is64 && read_at(fd, &eh, sizeof eh.e64, 0) != 0)
        return 0;
    uint64_t phoff = is64 ? eh.e64.e_phoff : eh.e32.e_phoff;
    unsigned phnum = is64 ? eh.e64.e_phnum : eh.e32.e_phnum;
    unsigned entsize = is64 ? eh.e64.e_phentsize : eh.e32.e_phentsize;
    unsigned type = is64 ? eh.e64.e_type : eh.e32.e_type;
    size_t want = is64 ? sizeof(Elf64_Phdr) : sizeof(Elf32_Phdr);
    if ((type != ET_EXEC && type != ET_DYN) || entsize < want || phnum == 0 || phnum > MAX_PHDRS)
        return 0;

    int interp = 0, go = 0;
    for (unsigned i = 0; i < phnum && !go; i++) {
        union {
            Elf64_Phdr p64;
            Elf32_Phdr p32;
        } ph;
        if (read_at(fd, &ph, want, (off_t)(phoff + (uint64_t)i * entsize)) != 0)
            return 0;
        uint32_t ptype = is64 ? ph.p64.p_type : ph.p32.p_type;
        if (ptype == PT_INTERP)
            interp = 1;
        else if (ptype == PT_NOTE)
            go = is64 ? has_go_note(fd, ph.p64.p_offset, ph.p64.p_filesz, ph.p64.p_align)
                      : has_go_note(fd, ph.p32.p_offset, ph.p32.p_filesz, ph.p32.p_align);
    }
    if (go) /* a Go program: whether dynamically linked or not, its calls bypass libc */
        return GAP_GO | (interp ? 0 : GAP_STATIC);
    return interp ? 0 : GAP_STATIC;
}

/* 1 for the dynamic loader's own file name (ld-linux*.so*, ld.so*, ld64.so*), run directly. */
static int is_loader(const char *path)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    return strncmp(base, "ld-linux", 8) == 0 || strncmp(base, "ld.so", 5) == 0 ||
           strncmp(base, "ld64.so", 7) == 0 || strncmp(base, "ld-musl", 7) == 0;
}

/* The secure-execution reasons of a file: mode `st`, capabilities `caps`, open on fd (or -1). */
static unsigned secure_reasons(const struct stat *st, int caps, int fd, int dirfd, const char *path)
{
    int setuid_bit = (st->st_mode & S_ISUID) != 0;
    int setgid_bit = (st->st_mode & (S_ISGID | S_IXGRP)) == (S_ISGID | S_IXGRP);
    uid_t ruid = getuid();
    gid_t rgid = getgid();
    unsigned reasons = 0;
    if (setuid_bit && st->st_uid != ruid)
        reasons |= GAP_SETUID;
    if (setgid_bit && st->st_gid != rgid)
        reasons |= GAP_SETGID;
    if (caps && ruid != 0)
        reasons |= GAP_FILE_CAPS;
    if (reasons == 0)
        return 0;
    /* The kernel ignores set-id bits and file capabilities under no_new_privs and on nosuid mounts. */
    if (prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1)
        return 0;
    struct statvfs vfs;
    int ok = fd >= 0 ? fstatvfs(fd, &vfs) : dirfd == AT_FDCWD ? statvfs(path, &vfs) : -1;
    if (ok == 0 && (vfs.f_flag & ST_NOSUID))
        return 0;
    return reasons;
}

/* Every reason why the program at dirfd/path will not be observed. */
static unsigned target_reasons(int dirfd, const char *path)
{
    struct stat st;
    if (fstatat(dirfd, path, &st, 0) != 0 || !S_ISREG(st.st_mode))
        return 0;
    unsigned reasons = 0;
    int fd = openat(dirfd, path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd >= 0) {
        reasons |= elf_reasons(fd);
        if ((reasons & GAP_STATIC) && !(reasons & GAP_GO) && is_loader(path))
            reasons &= ~(unsigned)GAP_STATIC;
    }
    int caps = 0;
    if (fd >= 0)
        caps = fgetxattr(fd, "security.capability", NULL, 0) > 0;
    else if (dirfd == AT_FDCWD)
        caps = getxattr(path, "security.capability", NULL, 0) > 0;
    reasons |= secure_reasons(&st, caps, fd, dirfd, path);
    if (fd >= 0)
        close(fd);
    return reasons;
}

/* Looks `file` up in the caller's PATH like execvp; fills out (cap bytes) with the first candidate
 * that is an executable regular file. Returns its length, or 0 when none is. */
static size_t search_path(const char *file, char *out, size_t cap)
{
    const char *path = getenv("PATH");
    if (path == NULL)
        path = "/bin:/usr/bin"; /* glibc's default (_CS_PATH) */
    size_t flen = strlen(file);
    const char *p = path;
    for (;;) {
        const char *end = strchrnul(p, ':');
        size_t dlen = (size_t)(end - p);
        size_t n = dlen ? dlen + 1 + flen : flen; /* an empty element is the current directory */
        if (n < cap) {
            memcpy(out, p, dlen);
            if (dlen)
                out[dlen] = '/';
            memcpy(out + (dlen ? dlen + 1 : 0), file, flen + 1);
            struct stat st;
            if (stat(out, &st) == 0 && S_ISREG(st.st_mode) && faccessat(AT_FDCWD, out, X_OK, AT_EACCESS) == 0)
                return n;
        }
        if (*end == '\0')
            return 0;
        p = end + 1;
    }
}

/* Reports one gap: dedup by (target, reasons) unless this process shares its parent's memory. */
static void gap_report(unsigned variant, const char *target, size_t len, unsigned reasons)
{
    int cancel, pid, foreign, slot = -1;
    unsigned flags = 0;
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel);
    uint64_t key = hash_mem(((uint64_t)KIND_COVERAGE_GAP << 32) | reasons, target, len);
    if (!dedup_first(hash_final(key), 0, &pid, &foreign, &slot, &flags))
        goto out;
    uint8_t buf[GAP_REC_MAX];
    struct rec r;
    rec_begin(&r, buf, sizeof buf, KIND_COVERAGE_GAP, pid);
    rec_add_flags(&r, flags);
    rec_put_u8(&r, TAG_VARIANT, (uint8_t)variant);
    rec_put_u32(&r, TAG_GAP_REASONS, reasons);
    rec_put_bytes(&r, TAG_PATH, target, len, PATH_FIELD_MAX);
    report_first(buf, r.len, foreign, slot);
out:
    pthread_setcancelstate(cancel, NULL);
}

void coverage_check_path(unsigned variant, int dirfd, const char *path, int search, int env_stripped)
{
    int saved = errno;
    if (path == NULL || !shim_enter()) {
        errno = saved;
        return;
    }
    char found[PATH_FIELD_MAX + 1];
    const char *target = path;
    size_t len = strlen(path);
    unsigned reasons = 0;
    if (search && path[0] != '\0' && strchr(path, '/') == NULL) {
        len = search_path(path, found, sizeof found);
        target = len ? found : path;
        if (len == 0)
            len = strlen(path);
        else
            reasons = target_reasons(AT_FDCWD, found);
    } else if (path[0] != '\0' && len <= PATH_FIELD_MAX) {
        reasons = target_reasons(dirfd, path);
    }
    if (env_stripped)
        reasons |= GAP_ENV_STRIPPED;
    if (reasons)
        gap_report(variant, target, len, reasons);
    shim_leave();
    errno = saved;
}

void coverage_check_fd(unsigned variant, int fd, int env_stripped)
{
    int saved = errno;
    if (fd < 0 || !shim_enter()) {
        errno = saved;
        return;
    }
    char link[FD_LINK_SIZE];
    size_t at = shim_fd_link(fd, link);
    unsigned reasons = target_reasons(AT_FDCWD, link);
    if (env_stripped)
        reasons |= GAP_ENV_STRIPPED;
    if (reasons) {
        char target[PATH_FIELD_MAX + 1];
        ssize_t n = readlink(link, target, sizeof target);
        if (n > 0)
            gap_report(variant, target, (size_t)n > PATH_FIELD_MAX ? PATH_FIELD_MAX : (size_t)n, reasons);
        else
            gap_report(variant, link, at, reasons);
    }
    shim_leave();
    errno = saved;
}
