"""Coverage of a workload's children: the shim keeps itself in every program the workload runs, and
reports the programs it cannot observe (static, Go, secure execution, an environment it could not
restore) as COVERAGE_GAP records.

The agent side and the helpers are those of tests/shimkit.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import shimkit
from shimkit import Agent, Received, needs_gcc, run, shim_env

from telltale._native import shim_path
from telltale.nodeagent.records import ExecVariant, GapReason, Record, RecordFlag, RecordKind

COVERAGE_SOURCES = Path(__file__).parent / "shim" / "coverage"
NOBODY = 65534
ENV = shutil.which("env") or "/usr/bin/env"

agent = shimkit.agent
programs = shimkit.programs

pytestmark = needs_gcc


@dataclass(frozen=True)
class Targets:
    """Programs to run, in a directory every user may enter."""

    dir: Path
    dynamic: Path
    static: Path
    go: Path


@pytest.fixture(scope="module")
def targets() -> Iterator[Targets]:
    """hello built dynamic, static and as a fake Go program (a C program with Go's build-id note)."""
    where = Path(tempfile.mkdtemp(prefix="telltale-coverage-"))
    where.chmod(0o755)
    src = str(COVERAGE_SOURCES / "hello.c")
    builds = {"dynamic": [], "static": ["-static"], "go": ["-DGO_NOTE"]}
    for name, flags in builds.items():
        subprocess.run(["gcc", "-O1", *flags, "-o", str(where / name), src], check=True, capture_output=True)
    yield Targets(where, where / "dynamic", where / "static", where / "go")
    shutil.rmtree(where)


def gaps(records: list[Record]) -> list[Record]:
    """First occurrences of COVERAGE_GAP records."""
    return [r for r in records if r.kind == RecordKind.COVERAGE_GAP and not r.flags & RecordFlag.REPEAT]


def starts_of(received: list[Received], exe: str) -> list[Record]:
    return [r.record for r in received if r.record.kind == RecordKind.PROC_START and r.record.exe == exe]


def env_lines(stdout: str) -> list[str]:
    return stdout.splitlines()


# ---- propagation -----------------------------------------------------------------------------

ENV_VARIANTS = ["execve", "execvpe", "execle", "fexecve", "execveat", "posix_spawn", "posix_spawnp"]


def test_environ_assigned_by_another_thread_during_exec_is_read_once(
    agent: Agent, programs: dict[str, Path], tmp_path: Path
) -> None:
    """While one thread assigns environ back and forth between two environments, 1000 vfork
    children execv env: each gets one of the two whole, plus telltale's variables (environ is
    read once per exec, so the plan of the repair and the copy it makes are of one array)."""
    ours = [f"TELLTALE_SOCKET={agent.path}", "TELLTALE_WORKLOAD=app=test"]
    env_a = [
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=1",
        f"LD_PRELOAD={shim_path()} libc.so.6",
        "B=2",
        *ours,
    ]
    env_b = ["H=1", "B=2", f"LD_PRELOAD={shim_path()}", *ours]
    res = run(programs["exec_envrace"], "1000", env=shim_env(agent.path), cwd=tmp_path)
    children = res.stdout.split("--\n")
    assert children[-1] == ""
    assert len(children) == 1001
    bad = [c for c in children[:-1] if c.splitlines() not in (env_a, env_b)]
    assert bad == [], bad[:3]


@pytest.mark.parametrize("variant", ENV_VARIANTS)
def test_clean_environment_keeps_the_shim(
    agent: Agent, programs: dict[str, Path], tmp_path: Path, variant: str
) -> None:
    """A program given an environment without telltale's variables still runs under the shim: they
    are appended after its own entries, which keep their order."""
    res = run(programs["exec_env"], variant, ENV, "1", "B=2", "A=1", env=shim_env(agent.path), cwd=tmp_path)
    assert env_lines(res.stdout) == [
        "B=2",
        "A=1",
        f"LD_PRELOAD={shim_path()}",
        f"TELLTALE_SOCKET={agent.path}",
        "TELLTALE_WORKLOAD=app=test",
    ]
    received = agent.settle()
    [child] = starts_of(received, os.path.realpath(ENV))
    assert child.workload == "app=test"
    assert gaps([r.record for r in received]) == []


def test_existing_preload_keeps_its_entries(agent: Agent, programs: dict[str, Path], tmp_path: Path) -> None:
    """An LD_PRELOAD without the shim gets the shim first; its own entries stay, in place."""
    entries = ["LD_PRELOAD=libm.so.6", "X=1"]
    res = run(programs["exec_env"], "execve", ENV, "1", *entries, env=shim_env(agent.path), cwd=tmp_path)
    assert env_lines(res.stdout)[:2] == [f"LD_PRELOAD={shim_path()} libm.so.6", "X=1"]
    assert len(starts_of(agent.settle(), os.path.realpath(ENV))) == 1


def test_complete_environment_is_passed_unchanged(
    agent: Agent, programs: dict[str, Path], tmp_path: Path
) -> None:
    """An environment that already carries the shim and both variables is not touched, even with
    values of its own."""
    given = [
        "TELLTALE_WORKLOAD=app=other",
        f"LD_PRELOAD=libm.so.6:{shim_path()}",
        f"TELLTALE_SOCKET={agent.path}",
    ]
    res = run(programs["exec_env"], "execve", ENV, "1", *given, env=shim_env(agent.path), cwd=tmp_path)
    assert env_lines(res.stdout) == given
    [child] = starts_of(agent.settle(), os.path.realpath(ENV))
    assert child.workload == "app=other"


def test_oversized_environment_is_passed_as_is_and_reported(
    agent: Agent, programs: dict[str, Path], tmp_path: Path
) -> None:
    """Beyond the bounds of the stack copy the program's environment goes through unchanged and the
    exec is reported as a gap: environment stripped."""
    entries = [f"V{i}=x" for i in range(2100)]
    res = run(programs["exec_env"], "execve", ENV, "1", *entries, env=shim_env(agent.path), cwd=tmp_path)
    assert env_lines(res.stdout) == entries
    received = agent.settle()
    assert starts_of(received, os.path.realpath(ENV)) == []
    [gap] = gaps([r.record for r in received])
    assert gap.path == ENV
    assert gap.gap_reasons == GapReason.ENVIRONMENT_STRIPPED
    assert gap.variant == ExecVariant.EXECVE


@pytest.mark.parametrize("how", ["cleared", "replaced"])
@pytest.mark.parametrize("variant", ["execv", "execvp", "execl", "execlp"])
def test_exec_after_clearenv_keeps_the_shim(
    agent: Agent, programs: dict[str, Path], tmp_path: Path, variant: str, how: str
) -> None:
    """The exec variants that pass environ on repair it too: after clearenv() (environ NULL, or
    holding only the program's own entries) the child still gets telltale's variables and reports."""
    res = run(programs["exec_cleared"], how, variant, ENV, env=shim_env(agent.path), cwd=tmp_path)
    own = ["B=2"] if how == "replaced" else []
    assert env_lines(res.stdout) == [
        *own,
        f"LD_PRELOAD={shim_path()}",
        f"TELLTALE_SOCKET={agent.path}",
        "TELLTALE_WORKLOAD=app=test",
    ]
    received = agent.settle()
    [child] = starts_of(received, os.path.realpath(ENV))
    assert child.workload == "app=test"
    assert gaps([r.record for r in received]) == []


def test_relative_shim_path_is_not_passed_on(agent: Agent, programs: dict[str, Path], tmp_path: Path) -> None:
    """A shim preloaded through a relative path is not put into a child's environment (the name
    would mean another file wherever the child runs): the environment goes as given and the exec is
    reported as a gap, environment stripped."""
    shutil.copy(shim_path(), tmp_path / "libtelltale_shim.so")
    env = {**shim_env(agent.path), "LD_PRELOAD": "./libtelltale_shim.so"}
    res = run(programs["exec_env"], "execve", ENV, "1", "B=2", env=env, cwd=tmp_path)
    assert env_lines(res.stdout) == ["B=2"]
    received = agent.settle()
    assert [r.record.kind for r in received if r.record.pid == res.pid][:1] == [RecordKind.PROC_START]
    assert starts_of(received, os.path.realpath(ENV)) == []
    [gap] = gaps([r.record for r in received])
    assert (gap.path, gap.gap_reasons, gap.variant) == (
        ENV,
        GapReason.ENVIRONMENT_STRIPPED,
        ExecVariant.EXECVE,
    )


def test_relative_shim_path_passed_on_by_the_program_is_left_alone(
    agent: Agent, programs: dict[str, Path], tmp_path: Path
) -> None:
    """An environment that already names the shim by the same relative path, and has both
    variables, is passed unchanged and is no gap: the child, in the same directory, reports."""
    shutil.copy(shim_path(), tmp_path / "libtelltale_shim.so")
    env = {**shim_env(agent.path), "LD_PRELOAD": "./libtelltale_shim.so"}
    res = run(programs["exec_env"], "execve", ENV, "1", "inherit", env=env, cwd=tmp_path)
    assert "LD_PRELOAD=./libtelltale_shim.so" in env_lines(res.stdout)
    received = agent.settle()
    assert len(starts_of(received, os.path.realpath(ENV))) == 1
    assert gaps([r.record for r in received]) == []


def test_unreachable_shim_is_not_passed_on(agent: Agent, programs: dict[str, Path], tmp_path: Path) -> None:
    """When the shim's file can no longer be read at its path at exec (here removed; likewise in
    another mount namespace or root), it is not put into the child's environment and the exec is
    reported as a gap, environment stripped."""
    copy = tmp_path / "libtelltale_shim.so"
    shutil.copy(shim_path(), copy)
    env = {**shim_env(agent.path), "LD_PRELOAD": str(copy)}
    res = run(programs["exec_cleared"], "replaced", "execv", ENV, str(copy), env=env, cwd=tmp_path)
    assert env_lines(res.stdout) == ["B=2"]
    received = agent.settle()
    assert starts_of(received, os.path.realpath(ENV)) == []
    [gap] = gaps([r.record for r in received])
    assert (gap.path, gap.gap_reasons, gap.variant) == (
        ENV,
        GapReason.ENVIRONMENT_STRIPPED,
        ExecVariant.EXECV,
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="changing the real user id needs root")
def test_shim_readable_by_the_effective_user_is_passed_on(
    agent: Agent, programs: dict[str, Path], tmp_path: Path
) -> None:
    """A process whose real user (nobody) cannot reach the shim's file but whose effective user
    (root), the one the loader opens it as, can, still passes the shim on to a program it runs with
    a clean environment: no gap is reported. (The child, run in secure-execution mode because its
    ids differ, has its LD_PRELOAD removed by the loader, but keeps telltale's other variables.)"""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    copy = private / "libtelltale_shim.so"
    shutil.copy(shim_path(), copy)
    copy.chmod(0o600)
    env = {**shim_env(agent.path), "LD_PRELOAD": str(copy)}
    res = run(programs["exec_ruid"], ENV, env=env, cwd=tmp_path)
    assert env_lines(res.stdout) == ["A=1", f"TELLTALE_SOCKET={agent.path}", "TELLTALE_WORKLOAD=app=test"]
    assert gaps(agent.records()) == []


# ---- coverage self-audit ---------------------------------------------------------------------


def test_static_binary_is_reported_once(
    agent: Agent, programs: dict[str, Path], targets: Targets, tmp_path: Path
) -> None:
    """A static program found through PATH is reported with its resolved path, once per process
    however often it is spawned; it runs unobserved."""
    env = shim_env(agent.path, PATH=f"{targets.dir}:/usr/bin:/bin")
    res = run(programs["exec_env"], "posix_spawnp", "static", "3", "inherit", env=env, cwd=tmp_path)
    assert res.stdout == "hello world\n" * 3
    records = agent.records()
    [gap] = gaps(records)
    assert gap.pid == res.pid
    assert gap.path == str(targets.static)
    assert gap.gap_reasons == GapReason.STATIC
    assert gap.variant == ExecVariant.POSIX_SPAWNP
    assert gap.workload is None  # the workload is the process's, from its PROC_START
    repeats = [r for r in records if r.kind == RecordKind.COVERAGE_GAP and r.flags & RecordFlag.REPEAT]
    assert sum(r.count for r in repeats) == 2
    assert [r.pid for r in records if r.kind == RecordKind.PROC_START] == [res.pid]


def test_go_program_is_reported(
    agent: Agent, programs: dict[str, Path], targets: Targets, tmp_path: Path
) -> None:
    """A dynamically linked Go program (build-id note) is a gap of its own: its calls bypass libc."""
    env = shim_env(agent.path)
    res = run(programs["exec_env"], "execve", str(targets.go), "1", "inherit", env=env, cwd=tmp_path)
    assert res.stdout == "hello world\n"
    [gap] = gaps(agent.records())
    assert (gap.path, gap.gap_reasons) == (str(targets.go), GapReason.GO)


def test_ordinary_program_is_not_a_gap(
    agent: Agent, programs: dict[str, Path], targets: Targets, tmp_path: Path
) -> None:
    """A dynamically linked C program is observed, and not reported."""
    env = shim_env(agent.path)
    run(programs["exec_env"], "execve", str(targets.dynamic), "1", "inherit", env=env, cwd=tmp_path)
    received = agent.settle()
    assert gaps([r.record for r in received]) == []
    assert len(starts_of(received, str(targets.dynamic))) == 1


def setid_copy(targets: Targets, name: str, uid: int, mode: int) -> Path:
    copy = targets.dir / name
    shutil.copy(targets.dynamic, copy)
    os.chown(copy, uid, uid)
    copy.chmod(mode)
    return copy


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create set-id programs")


@needs_root
def test_setuid_program_of_another_user_is_reported(
    agent: Agent, programs: dict[str, Path], targets: Targets, tmp_path: Path
) -> None:
    """Root running a program set-user-ID to another user: secure execution, the loader drops
    LD_PRELOAD (the child indeed never reports), and the shim says so."""
    target = setid_copy(targets, "setuid-nobody", NOBODY, 0o4755)
    env = shim_env(agent.path)
    res = run(programs["exec_env"], "execve", str(target), "1", "inherit", env=env, cwd=tmp_path)
    assert res.stdout == "hello world\n"
    received = agent.settle()
    [gap] = gaps([r.record for r in received])
    assert (gap.path, gap.gap_reasons) == (str(target), GapReason.SETUID)
    assert starts_of(received, str(target)) == []


@needs_root
def test_setuid_root_program_run_by_root_is_observed(
    agent: Agent, programs: dict[str, Path], targets: Targets, tmp_path: Path
) -> None:
    """A set-user-ID-root program run by root does not change the effective user: the kernel does
    not make the exec secure, the shim stays loaded, and nothing is reported."""
    target = setid_copy(targets, "setuid-root", 0, 0o4755)
    env = shim_env(agent.path)
    run(programs["exec_env"], "execve", str(target), "1", "inherit", env=env, cwd=tmp_path)
    received = agent.settle()
    assert gaps([r.record for r in received]) == []
    assert len(starts_of(received, str(target))) == 1


@needs_root
def test_file_capabilities_for_a_non_root_user_are_reported(
    agent: Agent, programs: dict[str, Path], targets: Targets, tmp_path: Path
) -> None:
    """A program with file capabilities run by an ordinary user is a secure exec: reported."""
    target = targets.dir / "with-caps"
    shutil.copy(targets.dynamic, target)
    target.chmod(0o755)
    setcap = shutil.which("setcap")
    if setcap is None or subprocess.run([setcap, "cap_net_raw+ep", str(target)], check=False).returncode:
        pytest.skip("cannot set file capabilities here")
    dropper = targets.dir / "drop_exec"
    shutil.copy(programs["drop_exec"], dropper)
    res = run(dropper, str(NOBODY), str(target), env=shim_env(agent.path), cwd=targets.dir)
    assert res.stdout == "hello world\n"
    received = agent.settle()
    [gap] = gaps([r.record for r in received])
    assert (gap.path, gap.gap_reasons) == (str(target), GapReason.FILE_CAPABILITIES)
    assert starts_of(received, str(target)) == []


# ---- real programs run unchanged -------------------------------------------------------------


def outcome(args: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    proc = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    return proc.returncode, proc.stdout, proc.stderr


SUBPROCESS_PROGRAM = """\
import subprocess, sys
r = subprocess.run(["/bin/echo", "from", "a", "clean", "child"], env={}, capture_output=True, text=True)
print(r.returncode, r.stdout, end="")
sys.exit(5)
"""

# Four client threads each exchange a line with a listener thread over loopback TCP while a
# subprocess runs; every wait is bounded.
THREADS_SOCKETS_PROGRAM = """\
import socket, subprocess, sys, threading

listener = socket.create_server(("127.0.0.1", 0))
listener.settimeout(20)
port = listener.getsockname()[1]

def read_all(s):
    data = b""
    while chunk := s.recv(64):
        data += chunk
    return data

def serve():
    for _ in range(4):
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(20)
            conn.sendall(read_all(conn).upper())

def ask(i, replies):
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(f"hello {i}".encode())
        s.shutdown(socket.SHUT_WR)
        replies[i] = read_all(s).decode()

server = threading.Thread(target=serve)
server.start()
replies = [""] * 4
clients = [threading.Thread(target=ask, args=(i, replies)) for i in range(4)]
for t in clients:
    t.start()
sort = subprocess.run(["sort"], input="c\\nb\\na\\n", capture_output=True, text=True, timeout=20)
for t in [*clients, server]:
    t.join(20)
listener.close()
print(replies, sort.returncode, sort.stdout.split())
sys.exit(6)
"""


def scenarios(targets: Targets, setuid: Path | None, programs: dict[str, Path]) -> dict[str, list[str]]:
    runs = {
        "bash pipeline": ["bash", "-c", "printf 'b\\na\\nc\\n' | sort | tr a-z A-Z; exit 3"],
        "python subprocess with env={}": [sys.executable, "-c", SUBPROCESS_PROGRAM],
        "static binary": ["sh", "-c", f"exec {targets.static} static"],
        "python threads, sockets and a subprocess": [sys.executable, "-c", THREADS_SOCKETS_PROGRAM],
        "threaded C program": [str(programs["busy_threads"]), "8", "100"],
        "forking server": [str(programs["fork_server"]), "6"],
    }
    if setuid is not None:
        runs["setuid binary"] = ["sh", "-c", f"{setuid} setuid; exit 4"]
    return runs


def test_real_programs_run_unchanged(
    agent: Agent, programs: dict[str, Path], targets: Targets, tmp_path: Path
) -> None:
    """Output and exit status are the same without the shim, with it, and with it but no agent;
    the clean-environment child, the threaded program and the forking server's processes still
    report when the agent runs."""
    setuid = setid_copy(targets, "setuid-other", NOBODY, 0o4755) if os.geteuid() == 0 else None
    plain = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    for name, args in scenarios(targets, setuid, programs).items():
        without = outcome(args, plain, tmp_path)
        with_agent = outcome(args, shim_env(agent.path), tmp_path)
        no_agent = outcome(args, shim_env(tmp_path / "nobody-listens.sock"), tmp_path)
        assert with_agent == without, name
        assert no_agent == without, name
    received = agent.settle()
    echo = os.path.realpath("/bin/echo")
    [child] = starts_of(received, echo)
    assert child.workload == "app=test"
    [threaded] = starts_of(received, str(programs["busy_threads"]))
    kinds = {r.record.kind for r in received if r.record.pid == threaded.pid}
    assert {RecordKind.CONNECT, RecordKind.FILE_OPEN} <= kinds
    server = starts_of(received, str(programs["fork_server"]))
    assert any(r.flags & RecordFlag.FORKED for r in server)  # the client, a fork child
    reasons = {(r.path, r.gap_reasons) for r in gaps([r.record for r in received])}
    assert (str(targets.static), GapReason.STATIC) in reasons
    if setuid is not None:
        assert (str(setuid), GapReason.SETUID) in reasons
