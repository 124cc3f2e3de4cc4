/* Writable-and-executable memory (mmap, mmap64, mprotect, pkey_mprotect) and capset.
 *
 *   MEMORY_PROTECT  RESULT (0 or -1 with errno: an address does not fit the field), FUNCTION,
 *                   PROTECTION, MAP_FLAGS (mmap only), LENGTH. Only a call asking for PROT_WRITE
 *                   and PROT_EXEC together is reported; every other call costs one bit test after
 *                   the real call. Identity: function, protection and flags (not the length or
 *                   address: a just-in-time compiler maps many regions of many sizes).
 *   CREDENTIALS     for capset: RESULT, FUNCTION "capset", CAPABILITIES (the requested effective,
 *                   permitted and inheritable sets; left out when the kernel could not read them
 *                   or did not know the header's version). Identity: function and sets.
 *
 * glibc's own mappings (malloc, the loader) use internal entry points and are not seen; neither
 * are capability changes made with a raw system call (libcap does so).
 *
 * mmap can be called while the shim resolves its real functions (a malloc replacement inside
 * dlsym): until they are resolved, these hooks make the system call themselves.
 */
#include "shim.h"

#include <linux/capability.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/syscall.h>

int capset(cap_user_header_t header, const cap_user_data_t data);

SHIM_REAL(mmap);
SHIM_REAL(mmap64);
SHIM_REAL(mprotect);
SHIM_REAL(pkey_mprotect);
SHIM_REAL(capset);

#define PROT_WX (PROT_WRITE | PROT_EXEC)

static __thread int resolving __attribute__((tls_model("initial-exec")));

/* Resolves a memory hook's real function unless this thread is already resolving one. */
static int mem_resolve(void **slot, const char *name)
{
    if (resolving)
        return 0;
    resolving = 1;
    int ok = shim_resolve(slot, name);
    resolving = 0;
    return ok;
}

#define MEM_RESOLVE(name)                                                                    \
    (SHIM_LIKELY(__atomic_load_n(&real_##name, __ATOMIC_RELAXED) != NULL) ||                 \
     mem_resolve((void **)&real_##name, #name))

/* At initialisation (even inert): a dlsym at a hook's first call, once the program runs, would
 * clear its pending dlerror(). A hook called earlier still resolves on first use. */
void hooks_mem_resolve(void)
{
    (void)MEM_RESOLVE(mmap);
    (void)MEM_RESOLVE(mmap64);
    (void)MEM_RESOLVE(mprotect);
    (void)MEM_RESOLVE(pkey_mprotect);
    (void)MEM_RESOLVE(capset);
}

struct mem_call {
    const char *function;
    int32_t ret, err;
    int32_t prot;
    int32_t map_flags;
    int has_map_flags;
    uint64_t length;
    /* capset */
    int has_caps;
    uint64_t caps[3];
};

static uint64_t mem_key(unsigned kind, const struct mem_call *c)
{
    uint64_t h = (uint64_t)kind << 32;
    h = hash_mem(h, c->function, strlen(c->function));
    if (kind == KIND_MEMORY_PROTECT) {
        h = hash_mem(h, &c->prot, sizeof c->prot);
        h = hash_mem(h, &c->map_flags, sizeof c->map_flags);
    } else {
        h = hash_mem(h, c->caps, c->has_caps ? sizeof c->caps : 0);
    }
    return hash_final(h);
}

static __attribute__((noinline)) void mem_report(unsigned kind, const struct mem_call *c)
{
    int cancel, pid, foreign, slot = -1;
    unsigned flags = 0;
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel);
    if (!dedup_first(mem_key(kind, c), 1, &pid, &foreign, &slot, &flags))
        goto out;

    uint8_t buf[REC_HEADER_SIZE + 12 + 4 + 16 + 3 * 8 + 4 * 4 + 8 + 32 + CALLER_FIELD];
    struct rec r;
    rec_begin(&r, buf, sizeof buf, kind, pid);
    rec_add_flags(&r, flags);
    int32_t result[2] = {c->ret, c->ret < 0 ? c->err : 0};
    rec_put(&r, TAG_RESULT, result, sizeof result);
    rec_put_bytes(&r, TAG_FUNCTION, c->function, strlen(c->function), 16);
    if (kind == KIND_MEMORY_PROTECT) {
        rec_put_i32(&r, TAG_PROTECTION, c->prot);
        if (c->has_map_flags)
            rec_put_i32(&r, TAG_MAP_FLAGS, c->map_flags);
        rec_put(&r, TAG_LENGTH, &c->length, sizeof c->length);
    } else if (c->has_caps) {
        rec_put(&r, TAG_CAPABILITIES, c->caps, sizeof c->caps);
    }
    report_first(buf, r.len, foreign, slot);
out:
    pthread_setcancelstate(cancel, NULL);
}

static __attribute__((noinline)) void wx_event(const char *function, int prot, int has_flags,
                                               int map_flags, size_t length, int failed, int err)
{
    if (shim_enter()) {
        struct mem_call c = {.function = function, .ret = failed ? -1 : 0, .err = err,
                             .prot = prot, .map_flags = map_flags, .has_map_flags = has_flags,
                             .length = length};
        mem_report(KIND_MEMORY_PROTECT, &c);
        shim_leave();
    }
    errno = err;
}

SHIM_EXPORT void *mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset)
{
    void *ret = MEM_RESOLVE(mmap) ? real_mmap(addr, length, prot, flags, fd, offset)
                                  : (void *)syscall(SYS_mmap, addr, length, prot, flags, fd, offset);
    if (SHIM_LIKELY((prot & PROT_WX) != PROT_WX))
        return ret;
    SHIM_NOTE_CALLER(); /* the module that asked, for CALLER */
    wx_event("mmap", prot, 1, flags, length, ret == MAP_FAILED, errno);
    return ret;
}

SHIM_EXPORT void *mmap64(void *addr, size_t length, int prot, int flags, int fd, off64_t offset)
{
    void *ret = MEM_RESOLVE(mmap64) ? real_mmap64(addr, length, prot, flags, fd, offset)
                                    : (void *)syscall(SYS_mmap, addr, length, prot, flags, fd, offset);
    if (SHIM_LIKELY((prot & PROT_WX) != PROT_WX))
        return ret;
    SHIM_NOTE_CALLER(); /* the module that asked, for CALLER */
    wx_event("mmap64", prot, 1, flags, length, ret == MAP_FAILED, errno);
    return ret;
}

SHIM_EXPORT int mprotect(void *addr, size_t length, int prot)
{
    int ret = MEM_RESOLVE(mprotect) ? real_mprotect(addr, length, prot)
                                    : (int)syscall(SYS_mprotect, addr, length, prot);
    if (SHIM_LIKELY((prot & PROT_WX) != PROT_WX))
        return ret;
    SHIM_NOTE_CALLER(); /* the module that asked, for CALLER */
    wx_event("mprotect", prot, 0, 0, length, ret != 0, errno);
    return ret;
}

SHIM_EXPORT int pkey_mprotect(void *addr, size_t length, int prot, int pkey)
{
    int ret = MEM_RESOLVE(pkey_mprotect) ? real_pkey_mprotect(addr, length, prot, pkey)
                                         : (int)syscall(SYS_pkey_mprotect, addr, length, prot, pkey);
    if (SHIM_LIKELY((prot & PROT_WX) != PROT_WX))
        return ret;
    SHIM_NOTE_CALLER(); /* the module that asked, for CALLER */
    wx_event("pkey_mprotect", prot, 0, 0, length, ret != 0, errno);
    return ret;
}

/* ---- capset ----------------------------------------------------------------------------------- */

/* The sets a capset call asked for, when the kernel read them; 0 otherwise. The kernel reads the
 * header, then (for a known version and this thread as target) the sets, and only then can fail
 * with EPERM (sets not allowed) or ENOMEM; any other failure may mean data is not readable, and
 * is not looked at. */
static int requested_caps(cap_user_header_t header, const cap_user_data_t data, int ret, int err,
                          uint64_t caps[3])
{
    if (header == NULL || data == NULL)
        return 0;
    if (ret != 0 && !((err == EPERM || err == ENOMEM) &&
                      (header->pid == 0 || header->pid == (int)gettid())))
        return 0;
    unsigned words;
    switch (header->version) {
    case _LINUX_CAPABILITY_VERSION_1:
        words = 1;
        break;
    case _LINUX_CAPABILITY_VERSION_2:
    case _LINUX_CAPABILITY_VERSION_3:
        words = 2;
        break;
    default:
        return 0;
    }
    caps[0] = caps[1] = caps[2] = 0;
    for (unsigned i = 0; i < words; i++) {
        caps[0] |= (uint64_t)data[i].effective << (32 * i);
        caps[1] |= (uint64_t)data[i].permitted << (32 * i);
        caps[2] |= (uint64_t)data[i].inheritable << (32 * i);
    }
    return 1;
}

SHIM_EXPORT int capset(cap_user_header_t header, const cap_user_data_t data)
{
    SHIM_REAL_OR_FAIL(capset, -1);
    int ret = real_capset(header, data);
    int err = errno;
    if (shim_enter()) {
        struct mem_call c = {.function = "capset", .ret = ret, .err = err};
        c.has_caps = requested_caps(header, data, ret, err, c.caps);
        mem_report(KIND_CREDENTIALS, &c);
        shim_leave();
    }
    errno = err;
    return ret;
}
