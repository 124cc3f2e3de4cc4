"""Catalog entries of the process category: what workloads run and how they gain power."""

from __future__ import annotations

from telltale.engine.alerttype import AlertTypeSpec
from telltale.engine.params import ParamSpec, absolute_path, glob, non_negative, program_glob, program_name
from telltale.v1 import common_pb2 as c

WRITABLE_DIRECTORIES = ("/tmp", "/var/tmp", "/dev/shm", "/run/user")
"""World-writable or per-user temporary directories, the usual drop zones of payloads."""

_EXEC = frozenset({c.EVENT_KIND_EXEC})
_START = frozenset({c.EVENT_KIND_PROCESS_START})

SPECS: tuple[AlertTypeSpec, ...] = (
    AlertTypeSpec(
        id="process.shell_launched",
        category=c.CATEGORY_PROCESS,
        title="Shell launched",
        description="A workload process ran a command shell: the program it executed is named like one "
        "of the configured shells.",
        rationale="Services rarely need a shell at run time. A shell started by a server process is a "
        "classic sign of command injection or of an attacker turning code execution into an "
        "interactive foothold.",
        remediation="Find the code path that runs the shell and call the needed program directly with "
        "an argument vector; if the shell is legitimate (an entrypoint script, a health check), add "
        "an exception for that binary with the reason.",
        params=(
            ParamSpec(
                "shells",
                "strings",
                "Program names (without directory) that count as shells.",
                ("sh", "bash", "dash", "zsh", "ksh", "csh", "tcsh", "fish", "busybox", "ash"),
                program_name,
            ),
        ),
        default_priority=c.PRIORITY_P2,
        blockable=False,
        event_kinds=_EXEC,
        exception_scopes=frozenset({"path"}),
    ),
    AlertTypeSpec(
        id="process.interpreter_launched",
        category=c.CATEGORY_PROCESS,
        title="Script interpreter launched",
        description="A workload process ran a script interpreter (Python, Perl, Ruby, Node.js, PHP, "
        "Lua, Tcl, ...): the name of the program it executed matches one of the configured "
        "patterns. With ignore_same_program, a program running another copy of itself (a Python "
        "service starting Python workers) is not reported.",
        rationale="An interpreter started by a service can run any code handed to it on its command "
        "line or standard input; attackers use them to run payloads without writing a binary.",
        remediation="Call the needed functionality in-process, or run the helper script through a "
        "fixed, reviewed entry point; add an exception for legitimate helpers.",
        params=(
            ParamSpec(
                "interpreters",
                "strings",
                "Patterns on program names (without directory) that count as interpreters.",
                (
                    "python",
                    "python[0-9]*",
                    "pypy*",
                    "perl",
                    "perl5*",
                    "ruby",
                    "ruby[0-9]*",
                    "node",
                    "nodejs",
                    "php",
                    "php[0-9]*",
                    "lua",
                    "lua[0-9]*",
                    "luajit",
                    "tclsh*",
                    "wish*",
                    "Rscript",
                    "pwsh",
                ),
                program_glob,
            ),
            ParamSpec(
                "ignore_same_program",
                "bool",
                "Ignore a process that runs a program of its own name (a process starting workers).",
                True,
            ),
        ),
        default_priority=c.PRIORITY_P3,
        blockable=False,
        event_kinds=_EXEC,
        exception_scopes=frozenset({"path"}),
    ),
    AlertTypeSpec(
        id="process.exec_from_writable_dir",
        category=c.CATEGORY_PROCESS,
        title="Program run from a writable directory",
        description="A workload process executed a program located under one of the configured "
        "world-writable or temporary directories. Relative paths are resolved against the "
        "process's starting directory when it is known; symbolic links are not followed.",
        rationale="Installed software lives in read-only system directories. Programs run from /tmp, "
        "/dev/shm and similar places are typically payloads dropped by an attacker.",
        remediation="Install the program into a directory owned by root and not writable by the "
        "workload, and run it from there.",
        params=(
            ParamSpec(
                "directories",
                "strings",
                "Absolute directories; a program anywhere below one of them triggers the alert.",
                WRITABLE_DIRECTORIES,
                absolute_path,
            ),
        ),
        default_priority=c.PRIORITY_P2,
        blockable=False,
        event_kinds=_EXEC,
        exception_scopes=frozenset({"path"}),
    ),
    AlertTypeSpec(
        id="process.privilege_gain",
        category=c.CATEGORY_PROCESS,
        title="Privilege gained",
        description="A workload process that was not root switched to user id 0 or group id 0 "
        "(setuid, seteuid, setreuid, setresuid and their group forms), added group 0 to its "
        "supplementary groups, or raised effective capabilities it did not have at start "
        "(capset). Refused calls are reported only with report_refused.",
        rationale="A service should only ever drop privileges. Gaining root or capabilities at run "
        "time is how exploits of setuid helpers, kernel bugs and misconfigured sudo end up, and it "
        "turns a compromised process into a compromised host.",
        remediation="Find which code path raises privileges; run the service with only the "
        "privileges it needs from the start and let it drop, never regain, them.",
        params=(
            ParamSpec(
                "report_refused",
                "bool",
                "Also report attempts the kernel refused (an unprivileged process asking for root).",
                False,
            ),
        ),
        default_priority=c.PRIORITY_P1,
        blockable=False,
        event_kinds=frozenset({c.EVENT_KIND_CREDENTIALS}),
    ),
    AlertTypeSpec(
        id="process.ptrace",
        category=c.CATEGORY_PROCESS,
        title="Process tracing",
        description="A workload process used ptrace with one of the configured requests: attaching "
        "to another process, or writing its memory or registers. Failed calls are ignored.",
        rationale="Tracing another process lets the tracer read its secrets and inject code into "
        "it. Outside debugging sessions, services have no reason to trace anything.",
        remediation="Remove debugging or profiling tools from production images; if a profiler is "
        "intended, add an exception for its binary.",
        params=(
            ParamSpec(
                "requests",
                "ints",
                "ptrace request numbers that trigger the alert (16 PTRACE_ATTACH, 16902 "
                "PTRACE_SEIZE, 4-6 PTRACE_POKE*, 13 PTRACE_SETREGS, 16901 PTRACE_SETREGSET).",
                (16, 0x4206, 4, 5, 6, 13, 0x4205),
                non_negative,
            ),
        ),
        default_priority=c.PRIORITY_P2,
        blockable=False,
        event_kinds=frozenset({c.EVENT_KIND_PTRACE}),
    ),
    AlertTypeSpec(
        id="process.memfd_exec",
        category=c.CATEGORY_PROCESS,
        title="Program run from memory",
        description="A workload process executed a program through a file descriptor (fexecve or "
        "execveat given no path, or a path under /proc/*/fd/ or /dev/fd/), or an anonymous "
        "memory file (/memfd:...), or a process started whose program is one. Each event is "
        "judged alone: an execution through a descriptor is reported whatever file it refers to.",
        rationale="Running a program that exists only in memory leaves nothing on disk for scanners "
        "and forensics: it is the signature of fileless malware and in-memory loaders.",
        remediation="Investigate the process at once. Legitimate users (some sandboxes and "
        "self-updating runtimes) can be excepted by binary.",
        params=(),
        default_priority=c.PRIORITY_P1,
        blockable=False,
        event_kinds=frozenset({c.EVENT_KIND_EXEC, c.EVENT_KIND_PROCESS_START}),
        exception_scopes=frozenset({"path"}),
    ),
    AlertTypeSpec(
        id="process.unexpected_binary",
        category=c.CATEGORY_PROCESS,
        title="Unexpected program",
        description="A workload process started a program image that matches none of the allowed "
        "patterns. Patterns with a '/' match the program's full path; patterns without one match "
        "its name. Fork children are not reported. With an empty allowlist every program is "
        "reported, which shows what an application runs before its allowlist is written.",
        rationale="A workload runs a known set of programs. Anything else, a downloaded tool, a "
        "compiler, a network scanner, is either drift or an intruder.",
        remediation="Add the program to the allowlist if it belongs to the application; otherwise "
        "find out who started it.",
        params=(
            ParamSpec(
                "allowed",
                "strings",
                "Patterns of the programs the workload may run, e.g. /usr/bin/* or python3*.",
                (),
                glob,
            ),
        ),
        default_priority=c.PRIORITY_P2,
        blockable=False,
        event_kinds=_START,
        exception_scopes=frozenset({"path"}),
    ),
    AlertTypeSpec(
        id="process.deleted_executable",
        category=c.CATEGORY_PROCESS,
        title="Program file deleted",
        description="A workload process started from a program file that had already been deleted "
        "(its path ends in ' (deleted)'). Memory files are reported by process.memfd_exec.",
        rationale="Malware deletes its binary right after starting it so that nothing remains on "
        "disk; legitimate programs rarely start from a deleted file.",
        remediation="Capture the process's executable from /proc/PID/exe before it exits and investigate it.",
        params=(),
        default_priority=c.PRIORITY_P2,
        blockable=False,
        event_kinds=_START,
        exception_scopes=frozenset({"path"}),
    ),
    AlertTypeSpec(
        id="process.security_prctl",
        category=c.CATEGORY_PROCESS,
        title="Process protections weakened",
        description="A workload process used prctl to weaken protections: letting any process "
        "trace it (PR_SET_PTRACER with PR_SET_PTRACER_ANY), raising ambient capabilities "
        "(PR_CAP_AMBIENT raise), changing its security bits (PR_SET_SECUREBITS) or rewriting its "
        "memory map description (PR_SET_MM). Only the options listed in the parameter count; "
        "failed calls are ignored.",
        rationale="These options undo kernel protections (who may trace the process, which "
        "capabilities children inherit, what /proc shows) and are used to prepare privilege "
        "escalation or to hide.",
        remediation="Find the code that sets the option; remove it, or add an exception for a "
        "program known to need it (a crash reporter setting a tracer).",
        params=(
            ParamSpec(
                "options",
                "ints",
                "prctl options that trigger the alert (1499557217 PR_SET_PTRACER, 47 "
                "PR_CAP_AMBIENT, 28 PR_SET_SECUREBITS, 35 PR_SET_MM).",
                (0x59616D61, 47, 28, 35),
                non_negative,
            ),
        ),
        default_priority=c.PRIORITY_P3,
        blockable=False,
        event_kinds=frozenset({c.EVENT_KIND_PRCTL}),
    ),
)
