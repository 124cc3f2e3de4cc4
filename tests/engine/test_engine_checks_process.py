"""Process alert types: what fires each, what does not, its parameters and its exceptions."""

from __future__ import annotations

import pytest
from casetable import Case, fires, quiet, uncovered
from eventkit import NOW, SHOP_API, K, compiled, credentials, exec_event, fired, prctl, ptrace, start

from telltale.v1 import common_pb2

SHELL = "process.shell_launched"
INTERPRETER = "process.interpreter_launched"
WRITABLE = "process.exec_from_writable_dir"
GAIN = "process.privilege_gain"
PTRACE = "process.ptrace"
MEMFD = "process.memfd_exec"
UNEXPECTED = "process.unexpected_binary"
DELETED = "process.deleted_executable"
PRCTL = "process.security_prctl"

FEXECVE = K.EXEC_VARIANT_FEXECVE
EXECVEAT = K.EXEC_VARIANT_EXECVEAT
PR_SET_PTRACER, PTRACER_ANY = 0x59616D61, (1 << 64) - 1

CASES = [
    fires("sh", SHELL, exec_event("/bin/sh"), "/bin/sh"),
    quiet("ls", SHELL, exec_event("/usr/bin/ls")),
    fires(
        "python", INTERPRETER, exec_event("/usr/bin/python3.12", exe="/usr/bin/node"), "/usr/bin/python3.12"
    ),
    fires("perl", INTERPRETER, exec_event("perl", exe="/usr/sbin/nginx"), "perl"),
    fires("node", INTERPRETER, exec_event("/usr/bin/node"), "/usr/bin/node"),
    quiet("same program", INTERPRETER, exec_event("/usr/bin/python3", exe="/usr/bin/python3.11")),
    fires(
        "same program reported",
        INTERPRETER,
        exec_event("/usr/bin/python3", exe="/usr/bin/python3.11"),
        "/usr/bin/python3",
        params="{ignore_same_program: false}",
    ),
    quiet("curl", INTERPRETER, exec_event("/usr/bin/curl")),
    quiet("not configured", INTERPRETER, exec_event("/usr/bin/ruby"), params="{interpreters: [perl]}"),
    fires("tmp", WRITABLE, exec_event("/tmp/x"), "/tmp/x"),
    quiet("usr", WRITABLE, exec_event("/usr/bin/x")),
    fires("setuid(0)", GAIN, credentials("setuid", uids=[0]), "user id 0 via setuid"),
    fires("setresuid", GAIN, credentials("setresuid", uids=[-1, 0, -1]), "user id 0 via setresuid"),
    fires("setgid(0)", GAIN, credentials("setgid", gids=[0]), "group id 0 via setgid"),
    fires("setgroups", GAIN, credentials("setgroups", groups=[4, 0]), "group 0 via setgroups"),
    fires(
        "capset adds",
        GAIN,
        credentials("capset", caps=["CAP_NET_RAW", "CAP_SYS_ADMIN"], held=["CAP_NET_RAW"]),
        "capabilities CAP_SYS_ADMIN via capset",
    ),
    quiet(
        "capset keeps", GAIN, credentials("capset", caps=["CAP_NET_RAW"], held=["CAP_NET_RAW", "CAP_CHOWN"])
    ),
    quiet("root drops", GAIN, credentials("setuid", uids=[1000], euid=0)),
    quiet("root stays root", GAIN, credentials("setresuid", uids=[0, 0, 0], euid=0, egid=0)),
    quiet("refused", GAIN, credentials("setuid", uids=[0], errno=1)),
    fires(
        "refused reported",
        GAIN,
        credentials("setuid", uids=[0], errno=1),
        "user id 0 via setuid (refused)",
        params="{report_refused: true}",
    ),
    fires("attach", PTRACE, ptrace(16), "PTRACE_ATTACH"),
    fires("poke", PTRACE, ptrace(5), "PTRACE_POKEDATA"),
    quiet("traceme", PTRACE, ptrace(0)),
    quiet("failed attach", PTRACE, ptrace(16, errno=1)),
    fires("traceme listed", PTRACE, ptrace(0), "PTRACE_TRACEME", params="{requests: [0]}"),
    fires("fexecve", MEMFD, exec_event("", variant=FEXECVE), "a file descriptor"),
    fires("execveat empty path", MEMFD, exec_event("", variant=EXECVEAT), "a file descriptor"),
    fires("proc self fd", MEMFD, exec_event("/proc/self/fd/3"), "/proc/self/fd/3"),
    fires("proc pid fd", MEMFD, exec_event("/proc/123/fd/7"), "/proc/123/fd/7"),
    fires("dev fd", MEMFD, exec_event("/dev/fd/5"), "/dev/fd/5"),
    fires("memfd path", MEMFD, exec_event("/memfd:x (deleted)"), "/memfd:x (deleted)"),
    fires("memfd image", MEMFD, start(exe="/memfd:x (deleted)"), "/memfd:x (deleted)"),
    quiet("execveat with path", MEMFD, exec_event("/usr/bin/ls", variant=EXECVEAT)),
    quiet("proc file", MEMFD, exec_event("/proc/self/exe")),
    quiet("forked memfd", MEMFD, start(exe="/memfd:x (deleted)", forked=True)),
    quiet("regular start", MEMFD, start()),
    fires(
        "not allowed", UNEXPECTED, start(exe="/usr/bin/nc"), "/usr/bin/nc", params="{allowed: [/srv/app/*]}"
    ),
    quiet("allowed by path", UNEXPECTED, start(exe="/srv/app/bin/run"), params="{allowed: [/srv/app/*]}"),
    quiet("allowed by name", UNEXPECTED, start(exe="/usr/bin/python3.11"), params="{allowed: [python3*]}"),
    quiet("fork", UNEXPECTED, start(exe="/usr/bin/nc", forked=True), params="{allowed: [python3*]}"),
    fires("empty allowlist", UNEXPECTED, start(exe="/usr/bin/python3"), "/usr/bin/python3"),
    fires("deleted", DELETED, start(exe="/tmp/.x (deleted)"), "/tmp/.x"),
    quiet("present", DELETED, start(exe="/usr/bin/python3")),
    quiet("memfd", DELETED, start(exe="/memfd:x (deleted)")),
    quiet("forked", DELETED, start(exe="/tmp/.x (deleted)", forked=True)),
    fires("ptracer any", PRCTL, prctl(PR_SET_PTRACER, PTRACER_ANY), "PR_SET_PTRACER"),
    fires("ambient raise", PRCTL, prctl(47, 2), "PR_CAP_AMBIENT"),
    fires("securebits", PRCTL, prctl(28, 0x2F), "PR_SET_SECUREBITS"),
    quiet("ptracer pid", PRCTL, prctl(PR_SET_PTRACER, 4242)),
    quiet("ambient lower", PRCTL, prctl(47, 3)),
    quiet("set name", PRCTL, prctl(15, 0)),
    quiet("failed", PRCTL, prctl(28, 1, errno=1)),
    fires("listed option", PRCTL, prctl(15, 0), "PR_SET_NAME", params="{options: [15]}"),
]


@pytest.mark.parametrize("case", CASES)
def test_process_case(case: Case) -> None:
    """Each process case fires with exactly its expected subjects, or stays quiet."""
    assert case.run() == list(case.expected)


def test_every_process_type_has_a_firing_and_a_quiet_case() -> None:
    """The table covers every process alert type both ways."""
    assert uncovered(CASES, common_pb2.CATEGORY_PROCESS) == []


def test_privilege_gain_summary_and_priority() -> None:
    """A gain of root is P1 by default and says how it happened."""
    (finding,) = compiled(f"{GAIN}: {{}}\n").evaluate(credentials("seteuid", uids=[-1, 0, -1]), SHOP_API, NOW)
    assert finding.summary == "shop/api gained user id 0 via seteuid"
    assert finding.priority == common_pb2.PRIORITY_P1


def test_interpreter_exception_by_path() -> None:
    """An exception on the interpreter path silences it only."""
    policy = compiled(
        f"""
        {INTERPRETER}:
          exceptions:
            - {{path: /usr/bin/perl, reason: log rotation helper}}
        """
    )
    assert fired(policy, exec_event("/usr/bin/perl", exe="/usr/sbin/nginx")) == []
    assert fired(policy, exec_event("/usr/bin/ruby", exe="/usr/sbin/nginx")) == ["/usr/bin/ruby"]


def test_unexpected_binary_exception_by_binary() -> None:
    """An exception by binary covers a program the allowlist lacks."""
    policy = compiled(
        f"""
        {UNEXPECTED}:
          params: {{allowed: [/srv/*]}}
          exceptions:
            - {{binary: /usr/bin/git, reason: deploy hook}}
        """
    )
    assert fired(policy, start(exe="/usr/bin/git")) == []
    assert fired(policy, start(exe="/usr/bin/nc")) == ["/usr/bin/nc"]


def test_memfd_exec_summary() -> None:
    """The summary says the program was run through a descriptor."""
    (finding,) = compiled(f"{MEMFD}: {{}}\n").evaluate(exec_event("/proc/self/fd/3"), SHOP_API, NOW)
    assert finding.summary == "shop/api ran a program through /proc/self/fd/3"
    assert finding.category == common_pb2.CATEGORY_PROCESS
