/* Coverage of a workload's children: keeping the shim in the environment of every program the
 * workload runs (propagate.c), and reporting the programs it cannot observe (coverage.c).
 *
 * Both run in the exec and spawn hooks, possibly in a vfork child that shares its parent's
 * memory: nothing here allocates, takes a lock, or writes shared state other than the dedup
 * table of a process that owns it.
 */
#ifndef TELLTALE_COVERAGE_H
#define TELLTALE_COVERAGE_H

#include "shim.h"

/* Record kind and field of format v1 owned by this part (FORMAT.md). */
enum {
    KIND_COVERAGE_GAP = 20,
    TAG_GAP_REASONS = 50,
};

/* Why a program run by the workload is not (fully) observed: bits of GAP_REASONS. */
enum gap_reason {
    GAP_STATIC = 1u << 0,       /* no program interpreter (PT_INTERP): LD_PRELOAD never applies */
    GAP_GO = 1u << 1,           /* Go program: its system calls bypass libc */
    GAP_SETUID = 1u << 2,       /* set-user-ID to another user: secure execution drops LD_PRELOAD */
    GAP_SETGID = 1u << 3,       /* set-group-ID to another group: likewise */
    GAP_FILE_CAPS = 1u << 4,    /* file capabilities for a non-root user: likewise */
    GAP_ENV_STRIPPED = 1u << 5, /* telltale's variables were removed and could not be restored */
};

/* ---- environment repair (propagate.c) -------------------------------------------------------- */

/* Bound of a repaired environment, kept on the caller's stack (which may be a signal handler's
 * small one): its array of pointers and a rewritten LD_PRELOAD entry together take at most this
 * many bytes. */
enum { ENV_REPAIR_STACK_MAX = 4096 };

struct env_plan {
    size_t slots;     /* pointers the repaired array needs (>= 1) */
    size_t text;      /* bytes a rewritten LD_PRELOAD entry needs (>= 1) */
    size_t entries;   /* entries of envp */
    long preload_at;  /* index of the LD_PRELOAD entry to rewrite; -1: none */
    unsigned add;     /* which of telltale's entries to append (propagate.c) */
    int stripped;     /* 1: variables are missing and could not be restored (fail-open) */
};

/* Decides how `envp` (NULL: empty) must change so that the program it is given to keeps the shim
 * and reports to the same agent and workload: an LD_PRELOAD entry naming the shim, TELLTALE_SOCKET
 * and TELLTALE_WORKLOAD. Nothing changes when the shim is inert. `stripped` when a repair is
 * needed but not possible (see propagate.c). Makes at most one system call (faccessat of the
 * shim's path), allowed in a vfork child and a signal handler. errno is preserved. */
void env_plan_make(struct env_plan *p, char *const envp[]);
/* Returns envp, or the repaired copy built in `slots` (p->slots pointers) and `text` (p->text
 * bytes): the same entries in the same order, an existing LD_PRELOAD with the shim put first, and
 * the missing variables appended. */
char *const *env_plan_apply(const struct env_plan *p, char *const envp[], char **slots, char *text);

/* Declares `name`, valid until the end of the enclosing block: `envp` or its repaired copy, on the
 * stack; `name##_plan` says whether it could be repaired. `envp` is evaluated once (for `environ`,
 * one read: another thread may assign it meanwhile, and the plan and the copy must be of one
 * array). */
#define SHIM_ENV_REPAIR(name, envp)                                                         \
    char *const *const name##_envp = (envp);                                                \
    struct env_plan name##_plan;                                                            \
    env_plan_make(&name##_plan, name##_envp);                                               \
    char *name##_slots[name##_plan.slots];                                                  \
    char name##_text[name##_plan.text];                                                     \
    char *const *name = env_plan_apply(&name##_plan, name##_envp, name##_slots, name##_text)

/* ---- coverage self-audit (coverage.c) -------------------------------------------------------- */

/* Inspects the program about to be run and reports a COVERAGE_GAP record when the shim will not
 * observe it (or `env_stripped`). `path` is resolved like the kernel does, relative to `dirfd`
 * (AT_FDCWD: the current directory); with `search`, a name without '/' is looked up in PATH as
 * execvp does. Once per target and reasons in a process. errno is preserved. */
void coverage_check_path(unsigned variant, int dirfd, const char *path, int search, int env_stripped);
/* The same for the file open on descriptor `fd` (fexecve, execveat with AT_EMPTY_PATH). */
void coverage_check_fd(unsigned variant, int fd, int env_stripped);

#endif /* TELLTALE_COVERAGE_H */
