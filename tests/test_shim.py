"""The LD_PRELOAD shim, observed from a real agent socket.

Each test compiles a small C program from tests/shim/, runs it with the shim preloaded and
TELLTALE_SOCKET pointing at a SOCK_SEQPACKET listener in tmp_path, and checks the decoded records
exactly.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import shimkit
from shimkit import NO_FLAGS, OPENSSL_HOOKS, Agent, by_pid, header, inet, needs_gcc, run, shim_env

from telltale._native import shim_path
from telltale.nodeagent.records import (
    ExecVariant,
    FileChange,
    Record,
    RecordFlag,
    RecordKind,
)

TRUE = os.path.realpath("/bin/true")

HOOKS = {
    "connect",
    "bind",
    "listen",
    "socket",
    "accept",
    "accept4",
    "sendto",
    "sendmsg",
    "getaddrinfo",
    "gethostbyname",
    "gethostbyname2",
    "gethostbyname_r",
    "gethostbyname2_r",
    "close",
    "close_range",
    "closefrom",
    "fclose",
    "dup",
    "dup2",
    "dup3",
    "fcntl",
    "fcntl64",
    "socketpair",
    "execve",
    "execv",
    "execvp",
    "execvpe",
    "execl",
    "execlp",
    "execle",
    "fexecve",
    "execveat",
    "posix_spawn",
    "posix_spawnp",
    "setuid",
    "seteuid",
    "setreuid",
    "setresuid",
    "setgid",
    "setegid",
    "setregid",
    "setresgid",
    "setgroups",
    "ptrace",
    "prctl",
    "memfd_create",
    "open",
    "open64",
    "openat",
    "openat64",
    "creat",
    "fopen",
    "fopen64",
    "freopen",
    "freopen64",
    "chmod",
    "fchmodat",
    "rename",
    "renameat",
    "unlink",
    "unlinkat",
    # library loads, W+X memory, capset, system, popen (tests/test_shim_libmem.py)
    "dlopen",
    "dlmopen",
    "mmap",
    "mmap64",
    "mprotect",
    "pkey_mprotect",
    "capset",
    "system",
    "popen",
    # unsafe C library functions and OpenSSL entry points (tests/test_shim_calls.py)
    "gets",
    "strcpy",
    "strcat",
    "stpcpy",
    "sprintf",
    "vsprintf",
    "getwd",
    "mktemp",
    "tmpnam",
    "tempnam",
    *OPENSSL_HOOKS,
}

pytestmark = needs_gcc

agent = shimkit.agent
programs = shimkit.programs
udp_port = shimkit.udp_port


# ---- tests -----------------------------------------------------------------------------------


def test_only_hooks_are_exported() -> None:
    """The shim's dynamic symbol table defines the hooks and nothing else."""
    out = subprocess.run(
        ["nm", "-D", "--defined-only", str(shim_path())], check=True, capture_output=True, text=True
    ).stdout
    # Versioned hooks show as name@@VERSION, and each version defines an absolute (A) symbol.
    fields = [line.split() for line in out.splitlines() if line.strip()]
    names = {f[-1].split("@")[0] for f in fields if f[-2] != "A"}
    assert names == HOOKS


def test_process_start_describes_the_process(agent: Agent, programs: dict[str, Path], tmp_path: Path) -> None:
    """At load the shim sends one PROC_START with exe, argv, cwd, creds and the workload."""
    before = time.time_ns()
    res = run(
        programs["proc_start"],
        "alpha",
        "two words",
        "",
        "é",
        env=shim_env(agent.path, workload="app=shop;component=web;v=1.2"),
        cwd=tmp_path,
    )
    received = agent.settle()
    assert [r.peer_pid for r in received] == [res.pid]
    rec = received[0].record
    assert before <= rec.time_ns <= time.time_ns()
    assert rec == Record(
        kind=RecordKind.PROC_START,
        flags=NO_FLAGS,
        pid=res.pid,
        ppid=os.getpid(),
        tid=res.pid,
        count=1,
        time_ns=rec.time_ns,
        dropped=0,
        seq=1,
        exe=str(programs["proc_start"]),
        argv=(str(programs["proc_start"]), "alpha", "two words", "", "é"),
        cwd=str(tmp_path),
        creds=(*os.getresuid(), *os.getresgid()),
        workload="app=shop;component=web;v=1.2",
        capabilities=rec.capabilities,  # checked in tests/test_shim_libmem.py
    )


def test_long_argv_and_workload_are_cut_and_flagged(
    agent: Agent, programs: dict[str, Path], tmp_path: Path
) -> None:
    """An argv longer than a record and a descriptor over 512 bytes are cut, with TRUNCATED set."""
    args = [f"{i:04d}" + "x" * 95 for i in range(100)]  # 10 kB of arguments
    run(programs["proc_start"], *args, env=shim_env(agent.path, workload="w" * 600), cwd=tmp_path)
    (rec,) = agent.records()
    assert rec.kind == RecordKind.PROC_START
    assert rec.flags == RecordFlag.TRUNCATED
    assert rec.workload == "w" * 512
    assert rec.argv is not None
    kept = rec.argv[1:]
    assert 10 < len(kept) < 40
    assert list(kept[:-1]) == args[: len(kept) - 1]
    assert args[len(kept) - 1].startswith(kept[-1])


def test_inert_without_socket_variable(agent: Agent, programs: dict[str, Path], tmp_path: Path) -> None:
    """With TELLTALE_SOCKET unset the shim sends nothing and the program runs normally."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]
        run(programs["connect_tcp"], "127.0.0.1", str(port), env=shim_env(None), cwd=tmp_path)
    assert agent.settle() == []


def test_connect_is_reported(agent: Agent, programs: dict[str, Path], tmp_path: Path) -> None:
    """A TCP connect yields one CONNECT with the address, the result and the socket's kind."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]
        res = run(programs["connect_tcp"], "127.0.0.1", str(port), env=shim_env(agent.path), cwd=tmp_path)
    start, conn = agent.records()
    assert header(start) == (RecordKind.PROC_START, NO_FLAGS, 1, 1, 0)
    assert header(conn) == (RecordKind.CONNECT, NO_FLAGS, 1, 2, 0)
    assert (conn.pid, conn.ppid, conn.tid) == (res.pid, os.getpid(), res.pid)
    assert conn.sockaddr == inet("127.0.0.1", port)
    assert conn.result == (0, 0)
    assert conn.sockinfo == (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    assert (conn.exe, conn.argv, conn.path, conn.variant, conn.backlog) == (None, None, None, None, None)


def test_bind_and_listen_are_reported(agent: Agent, programs: dict[str, Path], tmp_path: Path) -> None:
    """bind reports the address given; listen reports the bound address with the kernel's port."""
    res = run(programs["bind_listen"], env=shim_env(agent.path), cwd=tmp_path)
    port = int(res.stdout)
    start, bind, listen = agent.records()
    assert header(start) == (RecordKind.PROC_START, NO_FLAGS, 1, 1, 0)
    assert header(bind) == (RecordKind.BIND, NO_FLAGS, 1, 2, 0)
    assert header(listen) == (RecordKind.LISTEN, NO_FLAGS, 1, 3, 0)
    tcp = (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    assert (bind.sockaddr, bind.result, bind.sockinfo, bind.backlog) == (
        inet("0.0.0.0", 0),
        (0, 0),
        tcp,
        None,
    )
    assert (listen.sockaddr, listen.result, listen.sockinfo, listen.backlog) == (
        inet("0.0.0.0", port),
        (0, 0),
        tcp,
        16,
    )
    assert port > 0


def test_datagram_sends_are_reported_once_per_destination(
    agent: Agent, programs: dict[str, Path], tmp_path: Path, udp_port: int
) -> None:
    """Two sendto and one sendmsg to one address: one SEND, then a REPEAT counting the other two.
    The socket itself (plain UDP) is not reported."""
    res = run(programs["sendto_udp"], "127.0.0.1", str(udp_port), "2", env=shim_env(agent.path), cwd=tmp_path)
    start, send, repeat = agent.records()
    assert header(start) == (RecordKind.PROC_START, NO_FLAGS, 1, 1, 0)
    assert header(send) == (RecordKind.SEND, NO_FLAGS, 1, 2, 0)
    assert (send.pid, send.tid) == (res.pid, res.pid)
    assert (send.sockaddr, send.sockinfo, send.result) == (
        inet("127.0.0.1", udp_port),
        (socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP),
        (1, 0),
    )
    assert header(repeat) == (RecordKind.SEND, RecordFlag.REPEAT, 2, 3, 0)
    assert (repeat.sockaddr, repeat.sockinfo, repeat.result) == (send.sockaddr, send.sockinfo, send.result)


def test_accepted_clients_are_reported_once_per_address(
    agent: Agent, programs: dict[str, Path], tmp_path: Path
) -> None:
    """Three loopback clients (accept, then accept4 twice), each from its own port: one ACCEPT for
    127.0.0.1 carrying the first peer, and repeats adding up to three."""
    res = run(programs["accept_clients"], "3", env=shim_env(agent.path), cwd=tmp_path)
    port = int(res.stdout)
    records = agent.records()
    kinds = [r.kind for r in records if not r.flags & RecordFlag.REPEAT]
    assert kinds == [
        RecordKind.PROC_START,
        RecordKind.BIND,
        RecordKind.LISTEN,
        RecordKind.CONNECT,
        RecordKind.ACCEPT,
    ]
    first, *repeats = [r for r in records if r.kind == RecordKind.ACCEPT]
    assert (first.flags, first.count, first.result) == (NO_FLAGS, 1, None)
    assert first.sockinfo == (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    assert first.sockaddr is not None
    assert (first.sockaddr.family, first.sockaddr.address) == ("inet", "127.0.0.1")
    assert first.sockaddr.port not in (None, 0, port)
    assert [(r.flags, r.sockaddr) for r in repeats] == [(RecordFlag.REPEAT, first.sockaddr)] * len(repeats)
    assert first.count + sum(r.count for r in repeats) == 3


def test_name_lookup_is_reported_without_the_resolvers_own_calls(
    agent: Agent, programs: dict[str, Path], tmp_path: Path
) -> None:
    """Three lookups of localhost: one RESOLVE with the name and the addresses the program got,
    a REPEAT counting two, and nothing for the sockets the resolver uses internally."""
    res = run(programs["resolve"], "localhost", "3", env=shim_env(agent.path), cwd=tmp_path)
    addresses = tuple(res.stdout.split())
    assert "127.0.0.1" in addresses
    start, resolve, repeat = agent.records()
    assert header(start) == (RecordKind.PROC_START, NO_FLAGS, 1, 1, 0)
    assert header(resolve) == (RecordKind.RESOLVE, NO_FLAGS, 1, 2, 0)
    assert (resolve.name, resolve.addresses, resolve.result) == ("localhost", addresses, (0, 0))
    assert (resolve.sockaddr, resolve.sockinfo) == (None, None)
    assert header(repeat) == (RecordKind.RESOLVE, RecordFlag.REPEAT, 2, 3, 0)
    assert (repeat.name, repeat.addresses) == ("localhost", addresses)


def test_failed_name_lookup_is_reported_without_addresses(
    agent: Agent, programs: dict[str, Path], tmp_path: Path
) -> None:
    """A lookup that fails carries its EAI_* code and no ADDRESSES field."""
    res = run(programs["resolve"], "no such host", "1", env=shim_env(agent.path), cwd=tmp_path, check=False)
    assert res.returncode == 3, res
    _start, resolve = agent.records()
    assert (resolve.kind, resolve.name, resolve.addresses) == (RecordKind.RESOLVE, "no such host", None)
    assert resolve.result is not None
    assert resolve.result[0] < 0


def test_older_resolver_calls_are_reported(agent: Agent, programs: dict[str, Path], tmp_path: Path) -> None:
    """Each gethostbyname* call is one RESOLVE naming its function, with the addresses found or the
    h_errno code; a repeated name is counted, a retry after ERANGE is not seen, and the program's
    output (errno and h_errno included) is the same without the shim."""
    without = run(programs["hostbyname"], env={"PATH": os.environ.get("PATH", "/bin")}, cwd=tmp_path)
    res = run(programs["hostbyname"], env=shim_env(agent.path), cwd=tmp_path)
    assert res.stdout == without.stdout
    lines = [line.split() for line in res.stdout.splitlines()]
    failed_herr = int(lines[-1][1])
    assert failed_herr > 0
    recs = agent.records()
    assert [header(r) for r in recs] == [
        (RecordKind.PROC_START, NO_FLAGS, 1, 1, 0),
        *[(RecordKind.RESOLVE, NO_FLAGS, 1, seq, 0) for seq in range(2, 7)],
        (RecordKind.RESOLVE, RecordFlag.REPEAT, 1, 7, 0),
    ]
    assert [(r.function, r.name, r.result, r.addresses) for r in recs[1:]] == [
        ("gethostbyname", "localhost", (0, 0), tuple(lines[0][3:])),
        ("gethostbyname2", "127.0.0.2", (0, 0), ("127.0.0.2",)),
        ("gethostbyname_r", "127.0.0.3", (0, 0), ("127.0.0.3",)),
        ("gethostbyname2_r", "::1", (0, 0), ("::1",)),
        ("gethostbyname", "no such host", (failed_herr, 0), None),
        ("gethostbyname", "localhost", (0, 0), tuple(lines[0][3:])),
    ]


@pytest.mark.skipif(os.geteuid() != 0, reason="a raw socket needs CAP_NET_RAW (run as root)")
@pytest.mark.parametrize("where", ["above", "deep"])
def test_a_lookup_left_by_siglongjmp_does_not_silence_the_thread(
    agent: Agent, programs: dict[str, Path], tmp_path: Path, where: str
) -> None:
    """After a SIGALRM handler siglongjmps out of a lookup (an alarm-based resolver timeout), the
    thread's next connect made from above the abandoned lookup's frame is reported without waiting
    for another lookup; one made from deeper, over its reused stack, is not (the shim cannot tell
    it from the resolver's own) and leaves the next one from above to be the first occurrence."""
    fifo = tmp_path / "aliases"
    os.mkfifo(fifo)  # HOSTALIASES nobody writes: the resolver's open of it blocks
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        res = run(
            programs["lookup_longjmp"],
            str(fifo),
            str(port),
            where,
            env=shim_env(agent.path),
            cwd=tmp_path,
            check=False,
        )
    if res.returncode == 77:
        pytest.skip("the name lookup did not wait on HOSTALIASES here (another hosts source answered)")
    assert (res.returncode, res.stdout) == (0, "timed out\n"), res
    recs = agent.records()
    assert [r.kind for r in recs] == [RecordKind.PROC_START, RecordKind.CONNECT]
    assert recs[1].sockaddr == inet("127.0.0.1", port)
    assert recs[1].caller == str(programs["lookup_longjmp"])


def test_calls_within_a_lookup_make_no_system_call_of_the_shim(
    agent: Agent, programs: dict[str, Path], tmp_path: Path
) -> None:
    """Under a seccomp filter that kills the process on process_vm_readv, lookups whose name
    service makes hooked calls (socket, connect, close) run to the end: the shim's check of the
    guard those calls meet makes no system call. The lookups are reported, the name service's
    calls are not."""
    fake = tmp_path / "libfakeresolver.so"
    shimkit.gcc("-shared", "-fPIC", "-o", str(fake), str(shimkit.SOURCES / "libs" / "fake_resolver.c"))
    env = shim_env(agent.path, LD_PRELOAD=f"{shim_path()} {fake}")
    res = run(programs["seccomp_lookup"], env=env, cwd=tmp_path, check=False)
    assert (res.returncode, res.stdout) == (0, "resolved\n"), res
    recs = agent.records()
    ignored = {RecordKind.PROC_START, RecordKind.PRCTL}  # the program's own prctl calls
    assert [(r.kind, r.flags, r.count, r.name) for r in recs if r.kind not in ignored] == [
        (RecordKind.RESOLVE, NO_FLAGS, 1, "localhost"),
        (RecordKind.RESOLVE, RecordFlag.REPEAT, 2, "localhost"),
    ]


def test_raw_socket_is_reported(agent: Agent, programs: dict[str, Path], tmp_path: Path) -> None:
    """Two raw ICMP sockets: one SOCKET (type without SOCK_CLOEXEC) and a REPEAT; the ordinary UDP
    socket the program also opens is not reported."""
    run(programs["raw_socket"], env=shim_env(agent.path), cwd=tmp_path)
    start, sock, repeat = agent.records()
    assert header(start) == (RecordKind.PROC_START, NO_FLAGS, 1, 1, 0)
    assert header(sock) == (RecordKind.SOCKET, NO_FLAGS, 1, 2, 0)
    assert sock.sockinfo == (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    assert sock.result is not None
    assert sock.result[0] >= 0
    assert sock.result[1] == 0
    assert sock.sockaddr is None
    assert header(repeat) == (RecordKind.SOCKET, RecordFlag.REPEAT, 1, 3, 0)


@pytest.mark.skipif(os.geteuid() != 0, reason="changing ids needs root")
def test_credential_changes_are_reported(agent: Agent, programs: dict[str, Path], tmp_path: Path) -> None:
    """Each id change is one CREDENTIALS record with the call's name and requested ids (-1 =
    unchanged); setgroups carries its groups; the repeated setresuid is counted."""
    run(programs["priv_creds"], env=shim_env(agent.path), cwd=tmp_path)
    recs = agent.records()
    assert [header(r) for r in recs] == [
        (RecordKind.PROC_START, NO_FLAGS, 1, 1, 0),
        *[(RecordKind.CREDENTIALS, NO_FLAGS, 1, seq, 0) for seq in range(2, 7)],
        (RecordKind.CREDENTIALS, RecordFlag.REPEAT, 1, 7, 0),
    ]
    assert [(r.function, r.ids, r.groups, r.result) for r in recs[1:]] == [
        ("setresuid", (-1, 0, -1), None, (0, 0)),
        ("seteuid", (0,), None, (0, 0)),
        ("setresgid", (-1, 0, -1), None, (0, 0)),
        ("setgid", (0,), None, (0, 0)),
        ("setgroups", None, (0, 0), (0, 0)),
        ("setresuid", (-1, 0, -1), None, (0, 0)),
    ]


def test_ptrace_is_reported(agent: Agent, programs: dict[str, Path], tmp_path: Path) -> None:
    """A failing PEEKUSER on a missing pid (reported once, then counted) and a fork child's
    TRACEME, each with request, target pid and result."""
    res = run(programs["ptrace_calls"], env=shim_env(agent.path), cwd=tmp_path)
    child = int(res.stdout)
    procs = by_pid(agent.settle())
    parent = procs.pop(res.pid)
    assert [header(r) for r in parent] == [
        (RecordKind.PROC_START, NO_FLAGS, 1, 1, 0),
        (RecordKind.PTRACE, NO_FLAGS, 1, 2, 0),
        (RecordKind.PTRACE, RecordFlag.REPEAT, 1, 3, 0),
    ]
    for r in parent[1:]:
        assert (r.request, r.target_pid, r.result) == (3, 2147483647, (-1, errno.ESRCH))
    assert list(procs) == [child]
    assert [(r.kind, r.flags, r.request, r.target_pid, r.result) for r in procs[child]] == [
        (RecordKind.PROC_START, RecordFlag.FORKED, None, None, None),
        (RecordKind.PTRACE, NO_FLAGS, 0, 0, (0, 0)),
    ]


def test_prctl_and_memfd_are_reported(agent: Agent, programs: dict[str, Path], tmp_path: Path) -> None:
    """PR_SET_DUMPABLE is reported once and counted; PR_GET_DUMPABLE is not reported;
    memfd_create carries its name, flags and descriptor."""
    res = run(programs["prctl_memfd"], env=shim_env(agent.path), cwd=tmp_path)
    fd = int(res.stdout)
    start, prctl, memfd, repeat = agent.records()
    assert header(start) == (RecordKind.PROC_START, NO_FLAGS, 1, 1, 0)
    assert header(prctl) == (RecordKind.PRCTL, NO_FLAGS, 1, 2, 0)
    assert (prctl.option, prctl.argument, prctl.result) == (4, 1, (0, 0))  # PR_SET_DUMPABLE
    assert header(memfd) == (RecordKind.MEMFD, NO_FLAGS, 1, 3, 0)
    assert (memfd.memfd_name, memfd.memfd_flags, memfd.result) == ("x", 1, (fd, 0))  # MFD_CLOEXEC
    assert header(repeat) == (RecordKind.PRCTL, RecordFlag.REPEAT, 1, 4, 0)
    assert (repeat.option, repeat.argument) == (4, 1)


def test_sensitive_file_open_is_reported_once(
    agent: Agent, programs: dict[str, Path], tmp_path: Path
) -> None:
    """Reading /etc/hostname twice is one FILE_OPEN and a repeat; creating a file under the
    temporary directory is not reported."""
    res = run(programs["file_open"], str(tmp_path), "open", env=shim_env(agent.path), cwd=tmp_path)
    fd = int(res.stdout)
    start, opened, repeat = agent.records()
    assert header(start) == (RecordKind.PROC_START, NO_FLAGS, 1, 1, 0)
    assert header(opened) == (RecordKind.FILE_OPEN, NO_FLAGS, 1, 2, 0)
    assert (opened.path, opened.function, opened.result) == ("/etc/hostname", "open", (fd, 0))
    assert opened.file_flags == os.O_RDONLY | os.O_CLOEXEC
    assert opened.file_mode is None  # not a creating open
    assert header(repeat) == (RecordKind.FILE_OPEN, RecordFlag.REPEAT, 1, 3, 0)
    assert repeat.path == "/etc/hostname"


def test_fopen_of_a_sensitive_file_is_reported(
    agent: Agent, programs: dict[str, Path], tmp_path: Path
) -> None:
    """glibc's fopen does not go through the public open: it has its own hook."""
    res = run(programs["file_open"], str(tmp_path), "fopen", env=shim_env(agent.path), cwd=tmp_path)
    _start, opened = agent.records()
    assert header(opened) == (RecordKind.FILE_OPEN, NO_FLAGS, 1, 2, 0)
    assert (opened.path, opened.function, opened.file_flags) == ("/etc/hostname", "fopen", os.O_RDONLY)
    assert opened.result == (int(res.stdout), 0)


def test_freopen_of_a_sensitive_file_is_reported(
    agent: Agent, programs: dict[str, Path], tmp_path: Path
) -> None:
    """freopen onto a sensitive path is reported like fopen; the stream's first, ordinary file is not."""
    res = run(programs["file_open"], str(tmp_path), "freopen", env=shim_env(agent.path), cwd=tmp_path)
    _start, opened = agent.records()
    assert header(opened) == (RecordKind.FILE_OPEN, NO_FLAGS, 1, 2, 0)
    assert (opened.path, opened.function) == ("/etc/hostname", "freopen")
    assert opened.file_flags == os.O_RDONLY | os.O_CLOEXEC
    assert opened.result == (int(res.stdout), 0)


def test_risky_chmod_is_reported_anywhere(agent: Agent, programs: dict[str, Path], tmp_path: Path) -> None:
    """chmod adding world-write is reported whatever the path; a plain chmod, and a rename and
    unlink outside the sensitive paths, are not."""
    run(programs["file_change"], str(tmp_path), env=shim_env(agent.path), cwd=tmp_path)
    _start, changed = agent.records()
    assert header(changed) == (RecordKind.FILE_CHANGE, NO_FLAGS, 1, 2, 0)
    assert (changed.change, changed.path, changed.new_path) == (FileChange.CHMOD, f"{tmp_path}/f", None)
    assert (changed.file_mode, changed.result) == (0o602, (0, 0))


EXEC_CASES = {
    "execve": (ExecVariant.EXECVE, "/bin/true"),
    "execv": (ExecVariant.EXECV, "/bin/true"),
    "execvp": (ExecVariant.EXECVP, "true"),
    "execvpe": (ExecVariant.EXECVPE, "true"),
    "execl": (ExecVariant.EXECL, "/bin/true"),
    "execlp": (ExecVariant.EXECLP, "true"),
    "execle": (ExecVariant.EXECLE, "/bin/true"),
    "fexecve": (ExecVariant.FEXECVE, TRUE),  # the file the descriptor refers to
    "execveat": (ExecVariant.EXECVEAT, "/bin/true"),
}


@pytest.mark.parametrize("name", list(EXEC_CASES))
def test_exec_variant_is_reported(agent: Agent, programs: dict[str, Path], tmp_path: Path, name: str) -> None:
    """Each exec entry point is reported before the call, and the new image sends its own PROC_START."""
    variant, path = EXEC_CASES[name]
    res = run(programs["exec_variant"], name, env=shim_env(agent.path), cwd=tmp_path)
    received = agent.settle()
    assert [(r.conn, r.peer_pid) for r in received] == [(0, res.pid), (0, res.pid), (1, res.pid)]
    start, exec_, new_image = (r.record for r in received)
    assert header(start) == (RecordKind.PROC_START, NO_FLAGS, 1, 1, 0)
    assert start.exe == str(programs["exec_variant"])
    assert header(exec_) == (RecordKind.EXEC, NO_FLAGS, 1, 2, 0)
    assert (exec_.pid, exec_.variant, exec_.path, exec_.argv) == (
        res.pid,
        variant,
        path,
        ("true", f"via-{name}"),
    )
    assert (exec_.result, exec_.child_pid) == (None, None)
    assert header(new_image) == (RecordKind.PROC_START, NO_FLAGS, 1, 1, 0)
    assert (new_image.pid, new_image.exe, new_image.argv) == (res.pid, TRUE, ("true", f"via-{name}"))
    assert new_image.workload == "app=test"


SPAWN_CASES = {
    "posix_spawn": (ExecVariant.POSIX_SPAWN, "/bin/true"),
    "posix_spawnp": (ExecVariant.POSIX_SPAWNP, "true"),
}


@pytest.mark.parametrize("name", list(SPAWN_CASES))
def test_spawn_reports_result_and_child(
    agent: Agent, programs: dict[str, Path], tmp_path: Path, name: str
) -> None:
    """posix_spawn* is reported after the call with its result and the child's pid; the child
    image sends its own PROC_START."""
    variant, path = SPAWN_CASES[name]
    res = run(programs["spawn"], name, path, env=shim_env(agent.path), cwd=tmp_path)
    ret, child = map(int, res.stdout.split())
    assert ret == 0
    assert child > 0
    procs = by_pid(agent.settle())
    assert set(procs) == {res.pid, child}
    start, spawn = procs[res.pid]
    assert header(start) == (RecordKind.PROC_START, NO_FLAGS, 1, 1, 0)
    assert header(spawn) == (RecordKind.EXEC, NO_FLAGS, 1, 2, 0)
    assert (spawn.variant, spawn.path, spawn.argv) == (variant, path, ("true", "spawned"))
    assert (spawn.result, spawn.child_pid) == ((0, 0), child)
    (child_start,) = procs[child]
    assert header(child_start) == (RecordKind.PROC_START, NO_FLAGS, 1, 1, 0)
    assert (child_start.exe, child_start.ppid, child_start.argv) == (TRUE, res.pid, ("true", "spawned"))


def test_failed_spawn_reports_the_error(agent: Agent, programs: dict[str, Path], tmp_path: Path) -> None:
    """A spawn that fails is reported with its error number and no child."""
    res = run(
        programs["spawn"], "posix_spawn", "/nonexistent/program", env=shim_env(agent.path), cwd=tmp_path
    )
    assert res.stdout.split() == [str(errno.ENOENT), "0"]
    start, spawn = agent.records()
    assert start.kind == RecordKind.PROC_START
    assert header(spawn) == (RecordKind.EXEC, NO_FLAGS, 1, 2, 0)
    assert (spawn.variant, spawn.path, spawn.result, spawn.child_pid) == (
        ExecVariant.POSIX_SPAWN,
        "/nonexistent/program",
        (errno.ENOENT, errno.ENOENT),
        None,
    )


def test_repeats_are_counted_not_sent(
    agent: Agent, programs: dict[str, Path], tmp_path: Path, udp_port: int
) -> None:
    """1000 connects to one address: one CONNECT, then REPEAT summaries counting the other 999."""
    run(
        programs["repeat_connect"], "127.0.0.1", str(udp_port), "1000", env=shim_env(agent.path), cwd=tmp_path
    )
    start, first, *repeats = agent.records()
    assert header(start) == (RecordKind.PROC_START, NO_FLAGS, 1, 1, 0)
    assert header(first) == (RecordKind.CONNECT, NO_FLAGS, 1, 2, 0)
    assert first.sockaddr == inet("127.0.0.1", udp_port)
    assert first.sockinfo == (socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    assert repeats
    assert [r.seq for r in repeats] == list(range(3, 3 + len(repeats)))
    for r in repeats:
        assert (r.kind, r.flags, r.dropped) == (RecordKind.CONNECT, RecordFlag.REPEAT, 0)
        assert (r.sockaddr, r.sockinfo, r.result) == (first.sockaddr, first.sockinfo, first.result)
        assert r.count >= 1
    assert sum(r.count for r in repeats) == 999


def test_repeats_are_flushed_before_exec(
    agent: Agent, programs: dict[str, Path], tmp_path: Path, udp_port: int
) -> None:
    """Repeat counts are sent before an exec replaces the image (no destructor runs then)."""
    res = run(
        programs["repeat_then_exec"], "127.0.0.1", str(udp_port), env=shim_env(agent.path), cwd=tmp_path
    )
    received = agent.settle()
    assert [(r.conn, r.record.pid) for r in received] == [(0, res.pid)] * 4 + [(1, res.pid)]
    start, conn, exec_, repeat, new_image = (r.record for r in received)
    assert header(start) == (RecordKind.PROC_START, NO_FLAGS, 1, 1, 0)
    assert (header(conn), conn.sockaddr) == (
        (RecordKind.CONNECT, NO_FLAGS, 1, 2, 0),
        inet("127.0.0.1", udp_port),
    )
    assert (header(exec_), exec_.path) == ((RecordKind.EXEC, NO_FLAGS, 1, 3, 0), "/bin/true")
    assert (header(repeat), repeat.sockaddr) == (
        (RecordKind.CONNECT, RecordFlag.REPEAT, 1, 4, 0),
        conn.sockaddr,
    )
    assert (header(new_image), new_image.exe) == ((RecordKind.PROC_START, NO_FLAGS, 1, 1, 0), TRUE)


def test_socket_type_is_part_of_the_identity(agent: Agent, programs: dict[str, Path], tmp_path: Path) -> None:
    """The same address over TCP and over UDP are two behaviours, each with its own repeats."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        run(programs["two_types"], "127.0.0.1", str(port), env=shim_env(agent.path), cwd=tmp_path)
    _start, *rest = agent.records()
    address = inet("127.0.0.1", port)
    summary = [(r.kind, r.flags, r.count, r.sockaddr, r.sockinfo[1] if r.sockinfo else None) for r in rest]
    assert summary[:2] == [
        (RecordKind.CONNECT, NO_FLAGS, 1, address, socket.SOCK_STREAM),
        (RecordKind.CONNECT, NO_FLAGS, 1, address, socket.SOCK_DGRAM),
    ]
    assert sorted(summary[2:], key=lambda t: t[4] or 0) == [  # flushed in table order
        (RecordKind.CONNECT, RecordFlag.REPEAT, 1, address, socket.SOCK_STREAM),
        (RecordKind.CONNECT, RecordFlag.REPEAT, 1, address, socket.SOCK_DGRAM),
    ]


def test_repeat_of_a_long_record_is_cut_to_the_stored_size(
    agent: Agent, programs: dict[str, Path], tmp_path: Path
) -> None:
    """The first occurrence goes out whole; its REPEAT summary carries the first 1 KiB, flagged TRUNCATED."""
    run(programs["exec_repeat"], env=shim_env(agent.path), cwd=tmp_path)
    start, first, repeat = agent.records()
    args = tuple(chr(ord("a") + i) * 100 for i in range(20))
    assert header(start) == (RecordKind.PROC_START, NO_FLAGS, 1, 1, 0)
    assert header(first) == (RecordKind.EXEC, NO_FLAGS, 1, 2, 0)
    assert (first.variant, first.path, first.argv) == (ExecVariant.EXECV, "/nonexistent/program", args)
    assert header(repeat) == (RecordKind.EXEC, RecordFlag.REPEAT | RecordFlag.TRUNCATED, 1, 3, 0)
    assert (repeat.variant, repeat.path) == (first.variant, first.path)
    assert repeat.argv is not None
    kept = len(repeat.argv)
    assert repeat.argv[:-1] == args[: kept - 1]
    assert args[kept - 1].startswith(repeat.argv[-1])
    # 1024 bytes: header 40, VARIANT 5, PATH 24, ARGV header 4, then 951 bytes of arguments, the
    # last one cut (without its NUL).
    assert len("\0".join(repeat.argv)) == 1024 - 73


def test_full_dedup_table_sends_undeduplicated(
    agent: Agent, programs: dict[str, Path], tmp_path: Path
) -> None:
    """Beyond 256 distinct behaviours records go out flagged NODEDUP, every one of them.

    The program waits for the shim's connection to be writable before each call (the agent may be
    slow to read on a loaded machine): nothing is dropped, so every record is accounted for."""
    run(programs["burst"], "300", "paced", env=shim_env(agent.path), cwd=tmp_path)
    recs = agent.records()
    assert [r.seq for r in recs] == list(range(1, 1 + 300 + 1 + 1))  # PROC_START, connects, exec
    assert [r.dropped for r in recs] == [0] * len(recs)
    connects = [r for r in recs if r.kind == RecordKind.CONNECT]
    ports = []
    for r in connects:
        assert r.sockaddr is not None
        assert r.sockaddr.port is not None
        ports.append(r.sockaddr.port)
        stored = r.sockaddr.port < 10000 + 256  # the first 256 distinct addresses fill the table
        assert r.flags == (NO_FLAGS if stored else RecordFlag.NODEDUP)
    assert ports == list(range(10000, 10300))
    assert [(r.kind, r.flags) for r in recs if r.kind != RecordKind.CONNECT] == [
        (RecordKind.PROC_START, NO_FLAGS),
        (RecordKind.EXEC, RecordFlag.NODEDUP),
    ]


def test_errno_is_preserved(programs: dict[str, Path], tmp_path: Path, agent: Agent) -> None:
    """Failing calls keep their errno and successful ones leave errno untouched, with or without an agent."""
    with socket.socket() as closed, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        closed.bind(("127.0.0.1", 0))  # bound, not listening: connects are refused
        udp.bind(("127.0.0.1", 0))
        args = ("127.0.0.1", str(closed.getsockname()[1]), str(udp.getsockname()[1]))
        prog = programs["errno_keep"]
        run(prog, *args, env={"PATH": os.environ.get("PATH", "/bin")}, cwd=tmp_path)  # the baseline
        res = run(prog, *args, env=shim_env(agent.path), cwd=tmp_path)
        run(prog, *args, env=shim_env(tmp_path / "absent.sock"), cwd=tmp_path)
    procs = by_pid(agent.settle())
    assert len(procs) == 2
    recs = procs.pop(res.pid)
    (child_recs,) = procs.values()
    assert [(r.kind, r.flags, r.result) for r in child_recs] == [
        (RecordKind.PROC_START, RecordFlag.FORKED, None),
        (RecordKind.CONNECT, NO_FLAGS, (0, 0)),
    ]
    assert child_recs[0].ppid == res.pid
    firsts = [r for r in recs if not r.flags & RecordFlag.REPEAT]
    assert [(r.kind, r.result) for r in firsts] == [
        (RecordKind.PROC_START, None),
        (RecordKind.CONNECT, (-1, errno.ECONNREFUSED)),
        (RecordKind.CONNECT, (0, 0)),
        (RecordKind.BIND, (0, 0)),
        (RecordKind.LISTEN, (0, 0)),
        (RecordKind.CONNECT, (-1, errno.EBADF)),
        (RecordKind.EXEC, None),
        (RecordKind.LISTEN, (0, 0)),  # round two listens on another ephemeral port: a new address
    ]
    assert firsts[5].sockaddr is None  # the address of a call on a bad descriptor is not read
    # The failing bind repeats the first one (same address); round two repeats the other six.
    repeats = [r for r in recs if r.flags & RecordFlag.REPEAT]
    assert sum(r.count for r in repeats) == 7


def test_absent_agent_does_not_disturb(programs: dict[str, Path], tmp_path: Path) -> None:
    """With no agent at the socket path the program runs, prints nothing extra and exits promptly."""
    missing = tmp_path / "no-agent.sock"
    res = run(programs["burst"], "2000", env=shim_env(missing), cwd=tmp_path)
    assert (res.stdout, res.stderr) == ("", "")
    assert res.elapsed < 10
    assert not missing.exists()


def test_agent_that_never_reads_does_not_block(programs: dict[str, Path], tmp_path: Path) -> None:
    """An agent that never accepts nor reads (backlog and buffers full) does not block or break programs."""
    path = tmp_path / "stuck.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as stuck:
        stuck.bind(str(path))
        stuck.listen(1)
        env = shim_env(path)
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(
                pool.map(
                    lambda _: run(programs["burst"], "3000", env=env, cwd=tmp_path, timeout=60), range(4)
                )
            )
    for res in results:
        assert (res.returncode, res.stdout, res.stderr) == (0, "", "")
        assert res.elapsed < 20


def test_drops_are_counted_and_start_is_resent(programs: dict[str, Path], tmp_path: Path) -> None:
    """Records sent while the agent is away are dropped and counted, repeat counts are kept; once
    the agent is up, the shim reconnects, sends the undelivered PROC_START first, and the header
    shows every earlier drop."""
    path = tmp_path / "late.sock"
    with subprocess.Popen(
        [str(programs["late_agent"])],
        env=shim_env(path),
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdin is not None
        word, repeated = proc.stdout.readline().split()
        assert word == "ready"
        agent = Agent(path)
        try:
            proc.stdin.write("go\n")
            proc.stdin.flush()
            proc.wait(timeout=30)
            received = agent.settle()
        finally:
            agent.close()
    assert proc.returncode == 0
    recs = [r.record for r in received]
    assert recs
    assert {r.pid for r in recs} == {proc.pid}
    start, *rest = recs
    lost = start.seq - 1
    assert lost >= 7  # PROC_START, the first connect to the repeated address, five distinct ones
    assert header(start) == (RecordKind.PROC_START, NO_FLAGS, 1, lost + 1, lost)
    assert start.exe == str(programs["late_agent"])
    assert [(r.seq, r.dropped, r.count > 0) for r in rest] == [
        (lost + 2 + i, lost, True) for i in range(len(rest))
    ]
    firsts = [r for r in rest if r.flags == NO_FLAGS]
    repeats = [r for r in rest if r.flags == RecordFlag.REPEAT]
    assert len(firsts) + len(repeats) == len(rest)
    assert firsts
    assert all(r.kind == RecordKind.CONNECT and r.count == 1 for r in firsts)
    # Repeats counted while no agent could take them were kept, not lost.
    assert {r.sockaddr for r in repeats} == {inet("127.0.0.1", 19999)}
    assert sum(r.count for r in repeats) == int(repeated) - 1


def test_fork_child_reports_as_itself(
    agent: Agent, programs: dict[str, Path], tmp_path: Path, udp_port: int
) -> None:
    """A fork child sends a FORKED PROC_START under its own pid and keeps its own dedup table."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
        other.bind(("127.0.0.1", 0))
        port_b = other.getsockname()[1]
        res = run(
            programs["fork_connect"],
            "127.0.0.1",
            str(udp_port),
            str(port_b),
            env=shim_env(agent.path),
            cwd=tmp_path,
        )
    child = int(res.stdout)
    received = agent.settle()
    for r in received:
        assert r.peer_pid == r.record.pid
    procs = by_pid(received)
    assert set(procs) == {res.pid, child}
    a, b = inet("127.0.0.1", udp_port), inet("127.0.0.1", port_b)

    p_start, p_conn, p_repeat = procs[res.pid]
    assert header(p_start) == (RecordKind.PROC_START, NO_FLAGS, 1, 1, 0)
    assert (header(p_conn), p_conn.sockaddr) == ((RecordKind.CONNECT, NO_FLAGS, 1, 2, 0), a)
    assert (header(p_repeat), p_repeat.sockaddr) == ((RecordKind.CONNECT, RecordFlag.REPEAT, 1, 3, 0), a)

    c_start, c_a, c_b = procs[child]
    assert header(c_start) == (RecordKind.PROC_START, RecordFlag.FORKED, 1, 1, 0)
    assert (c_start.ppid, c_start.exe, c_start.workload) == (
        res.pid,
        str(programs["fork_connect"]),
        "app=test",
    )
    assert (header(c_a), c_a.sockaddr, c_a.ppid) == ((RecordKind.CONNECT, NO_FLAGS, 1, 2, 0), a, res.pid)
    assert (header(c_b), c_b.sockaddr) == ((RecordKind.CONNECT, NO_FLAGS, 1, 3, 0), b)


def test_vfork_child_reports_directly(agent: Agent, programs: dict[str, Path], tmp_path: Path) -> None:
    """An exec from a vfork child is sent undeduplicated under the child's pid (seq 0, NODEDUP),
    leaving the parent's table and counters alone."""
    res = run(programs["vfork_exec"], env=shim_env(agent.path), cwd=tmp_path)
    child = int(res.stdout)
    received = agent.settle()
    procs = by_pid(received)
    assert set(procs) == {res.pid, child}
    (p_start,) = procs[res.pid]
    assert header(p_start) == (RecordKind.PROC_START, NO_FLAGS, 1, 1, 0)
    exec_, c_start = procs[child]
    assert header(exec_) == (RecordKind.EXEC, RecordFlag.NODEDUP, 1, 0, 0)
    assert (exec_.ppid, exec_.variant, exec_.path, exec_.argv) == (
        res.pid,
        ExecVariant.EXECV,
        "/bin/true",
        ("true", "from-vfork"),
    )
    assert header(c_start) == (RecordKind.PROC_START, NO_FLAGS, 1, 1, 0)
    assert (c_start.exe, c_start.argv) == (TRUE, ("true", "from-vfork"))


def test_fork_child_does_not_wait_for_the_loader_lock(
    agent: Agent, programs: dict[str, Path], tmp_path: Path
) -> None:
    """Children forked while another thread holds the loader's lock (inside dl_iterate_phdr) exec
    without waiting for it: glibc does not reset that lock in a fork child, so a child that took
    it would hang (the program's children have an alarm). Each child's EXEC names its caller."""
    res = run(programs["fork_loader_lock"], "6", env=shim_env(agent.path), cwd=tmp_path, check=False)
    assert "hung" not in res.stdout, "a fork child waited for the loader's lock"
    assert res.returncode == 0, res
    children = [int(line) for line in res.stdout.split()]
    assert len(children) == 6
    procs = by_pid(agent.settle())
    for child in children:
        execs = [r for r in procs[child] if r.kind == RecordKind.EXEC]
        assert [(e.path, e.caller) for e in execs] == [("/bin/true", str(programs["fork_loader_lock"]))]


def test_threads_share_one_dedup_table(
    agent: Agent, programs: dict[str, Path], tmp_path: Path, udp_port: int
) -> None:
    """8 threads connecting at once: no crash, each distinct address sent once, every repeat counted."""
    threads, count, base = 8, 1000, 40000
    run(
        programs["threads_connect"],
        "127.0.0.1",
        str(udp_port),
        str(base),
        str(threads),
        str(count),
        env=shim_env(agent.path),
        cwd=tmp_path,
    )
    start, *rest = agent.records()
    assert header(start) == (RecordKind.PROC_START, NO_FLAGS, 1, 1, 0)
    assert sorted(r.seq for r in rest) == list(range(2, 2 + len(rest)))
    assert all(r.kind == RecordKind.CONNECT and r.dropped == 0 for r in rest)
    shared = inet("127.0.0.1", udp_port)
    firsts = [r for r in rest if not r.flags & RecordFlag.REPEAT]
    assert all(r.flags == NO_FLAGS and r.count == 1 for r in firsts)
    assert sorted(r.sockaddr.port for r in firsts if r.sockaddr) == sorted(
        [udp_port, *range(base, base + threads)]
    )
    repeats = [r for r in rest if r.flags & RecordFlag.REPEAT]
    assert all(r.flags == RecordFlag.REPEAT and r.sockaddr == shared for r in repeats)
    assert sum(r.count for r in repeats) == threads * count - 1


@pytest.mark.parametrize("mode", ["file", "socket"])
def test_program_reusing_the_shim_descriptor_is_left_alone(
    agent: Agent, programs: dict[str, Path], tmp_path: Path, udp_port: int, mode: str
) -> None:
    """A program that closes every descriptor and puts a file or a socket of its own on the shim's
    number never gets records written there; the shim reconnects on a new descriptor."""
    target = tmp_path / "program-output"
    res = run(
        programs["fd_steal"],
        mode,
        str(target),
        "127.0.0.1",
        str(udp_port),
        env=shim_env(agent.path),
        cwd=tmp_path,
    )
    if mode == "file":
        assert target.stat().st_size == 0
    received = agent.settle()
    assert [(r.conn, r.peer_pid) for r in received] == [(0, res.pid), (1, res.pid), (1, res.pid)]
    start, conn, repeat = (r.record for r in received)
    assert header(start) == (RecordKind.PROC_START, NO_FLAGS, 1, 1, 0)
    assert (header(conn), conn.sockaddr) == (
        (RecordKind.CONNECT, NO_FLAGS, 1, 2, 0),
        inet("127.0.0.1", udp_port),
    )
    assert (header(repeat), repeat.sockaddr) == (
        (RecordKind.CONNECT, RecordFlag.REPEAT, 1, 3, 0),
        conn.sockaddr,
    )


@pytest.mark.parametrize("mode", ["strcpy", "execve", "execve_clean"])
@pytest.mark.parametrize("active", [True, False])
def test_hooks_fit_a_signal_handlers_small_stack(
    agent: Agent, programs: dict[str, Path], tmp_path: Path, mode: str, active: bool
) -> None:
    """A signal handler on an 8 KiB alternate stack calls strcpy, then execve (with the program's
    environment, or one the shim repairs): the hooks fit on that stack, and the exec is reported
    with its caller."""
    env = shim_env(agent.path if active else None)
    res = run(programs["altstack_exec"], mode, env=env, cwd=tmp_path, check=False)
    assert res.returncode == 0, res
    assert res.stdout == ("handler returned\n" if mode == "strcpy" else "")
    if not active or mode == "strcpy":
        return
    execs = [r for r in by_pid(agent.settle())[res.pid] if r.kind == RecordKind.EXEC]
    assert [(e.path, e.argv, e.caller) for e in execs] == [
        ("/bin/true", ("true",), str(programs["altstack_exec"]))
    ]
