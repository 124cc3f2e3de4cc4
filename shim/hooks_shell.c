/* system(3) and popen(3).
 *
 * glibc runs both through its internal posix_spawn, which passes through no public symbol, so
 * they are hooked themselves. Each is reported before the call as an EXEC record (VARIANT
 * SYSTEM or POPEN) of what it runs: PATH "/bin/sh", ARGV "sh", "-c" and the command; a call
 * without a command (system(NULL) only asks whether a shell exists) is not reported. The shell
 * itself, loaded with the shim through the inherited environment, then reports its own start and
 * whatever it executes. Identity for dedup: as for exec (variant, path and arguments).
 */
#include "shim.h"

#include <stdio.h>
#include <stdlib.h>

SHIM_REAL(system);
SHIM_REAL(popen);

void hooks_shell_resolve(void)
{
    (void)SHIM_RESOLVE(system);
    (void)SHIM_RESOLVE(popen);
}

SHIM_EXPORT int system(const char *command)
{
    SHIM_REAL_OR_FAIL(system, -1);
    if (command != NULL)
        exec_report_shell(VAR_SYSTEM, command);
    return real_system(command);
}

SHIM_EXPORT FILE *popen(const char *command, const char *type)
{
    SHIM_REAL_OR_FAIL(popen, NULL);
    if (command != NULL)
        exec_report_shell(VAR_POPEN, command);
    return real_popen(command, type);
}
