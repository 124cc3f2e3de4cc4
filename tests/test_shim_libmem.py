"""Library loads, writable-and-executable memory, capset, system and popen, observed by the shim
from real processes (harness of tests/shimkit.py); the events they become through both intake
paths; and the alerts the engine raises from them."""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import shimkit
import trio
import trio.testing
from helpers import eventually
from shimkit import NO_FLAGS, Agent, by_pid, header, run, shim_env

from telltale._native import shim_path
from telltale.engine.evaluate import CompiledPolicy
from telltale.engine.policy import parse_document
from telltale.nodeagent.batcher import Counters
from telltale.nodeagent.convert import fill_process, to_event
from telltale.nodeagent.intake import Intake, Workloads
from telltale.nodeagent.records import ExecVariant, LibraryFlag, Record, RecordFlag, RecordKind
from telltale.v1 import common_pb2

try:
    from telltale._native import _records as native_records
except ImportError:
    native_records = None  # type: ignore[assignment]

agent = shimkit.agent
programs = shimkit.programs

LIB = RecordKind.LIBRARY_LOAD
MEM = RecordKind.MEMORY_PROTECT
WRITABLE = LibraryFlag.WRITABLE_DIR
AT_START = LibraryFlag.AT_START
PROT_RWX, PROT_WX = 7, 6
MAP_PRIVATE_ANON, MAP_NORESERVE = 0x22, 0x4000
REPEAT = RecordFlag.REPEAT

PLUGIN_C = "int tt_dep_value(void);\nint tt_plugin_answer(void) { return 40 + tt_dep_value(); }\n"
DEP_C = "int tt_dep_value(void) { return 2; }\n"


@pytest.fixture
def libs(tmp_path: Path) -> Path:
    """A world-writable directory holding libttplug.so, which needs libttdep.so beside it ($ORIGIN)."""
    d = tmp_path / "libs"
    d.mkdir()
    d.chmod(0o777)
    (tmp_path / "dep.c").write_text(DEP_C)
    (tmp_path / "plug.c").write_text(PLUGIN_C)
    gcc = ["gcc", "-shared", "-fPIC", "-Wall", "-Werror"]
    subprocess.run([*gcc, "-o", str(d / "libttdep.so"), str(tmp_path / "dep.c")], check=True)
    subprocess.run(
        [
            *gcc,
            "-o",
            str(d / "libttplug.so"),
            str(tmp_path / "plug.c"),
            f"-L{d}",
            "-lttdep",
            "-Wl,--enable-new-dtags,-rpath,$ORIGIN",
        ],
        check=True,
    )
    return d


def with_start_libraries(env: dict[str, str]) -> dict[str, str]:
    """The environment the agent gives workloads: the inventory of start libraries included."""
    env = dict(env)
    del env["TELLTALE_START_LIBRARIES"]
    return env


def library(rec: Record) -> tuple[str | None, LibraryFlag | None, str | None, tuple[int, int] | None]:
    return rec.path, rec.lib_flags, rec.requested, rec.result


# ---- library loads ---------------------------------------------------------------------------


def test_libraries_loaded_with_the_program_are_reported_once(
    agent: Agent, programs: dict[str, Path], tmp_path: Path, libs: Path
) -> None:
    """At start: each loaded object once (not the shim, not the vDSO), with AT_START and whether
    its directory is writable; PROC_START carries the other preloads and the library path."""
    extra = str(libs / "libttdep.so")
    env = with_start_libraries(shim_env(agent.path))
    env["LD_PRELOAD"] = f"{shim_path()} {extra}"
    env["LD_LIBRARY_PATH"] = f"{libs}::/opt/none"
    res = run(programs["proc_start"], env=env, cwd=tmp_path)
    start, *loads = by_pid(agent.settle())[res.pid]
    assert header(start) == (RecordKind.PROC_START, NO_FLAGS, 1, 1, 0)
    assert start.ld_preload == (extra,)
    assert start.ld_library_path == (str(libs), "", "/opt/none")
    assert [(r.kind, r.seq, r.result, r.requested) for r in loads] == [
        (LIB, seq, None, None) for seq in range(2, 2 + len(loads))
    ]
    paths = [r.path or "" for r in loads]
    assert len(set(paths)) == len(paths)
    flags = {r.path: r.lib_flags for r in loads}
    assert flags[extra] == AT_START | WRITABLE
    (libc,) = [p for p in paths if p.endswith("/libc.so.6")]
    assert flags[libc] == AT_START, "a root-owned system directory is not writable by the user"
    assert all(f is not None and f & AT_START for f in flags.values())
    assert all(p.startswith("/") and "telltale_shim" not in p and "vdso" not in p for p in paths)


@pytest.mark.parametrize("how", ["absolute", "relative"])
def test_dlopen_reports_the_library_its_dependencies_and_failures(
    agent: Agent, programs: dict[str, Path], tmp_path: Path, libs: Path, how: str
) -> None:
    """A dlopen reports the library it returned (RESULT, REQUESTED when the name differs), the
    dependencies it pulled in, each once; a failed one its error, deduplicated by name."""
    plugin = libs / "libttplug.so"
    name = str(plugin) if how == "absolute" else "./libs/libttplug.so"
    missing_name = "./none/libttmissing.so"  # a bare name's failure is the loader's alone
    res = run(programs["dlopen_lib"], name, missing_name, env=shim_env(agent.path), cwd=tmp_path)
    assert res.stdout == "42\n"
    start, plug, dep, missing, repeat = by_pid(agent.settle())[res.pid]
    assert header(start) == (RecordKind.PROC_START, NO_FLAGS, 1, 1, 0)
    assert header(plug) == (LIB, NO_FLAGS, 1, 2, 0)
    assert library(plug) == (str(plugin), WRITABLE, None if how == "absolute" else name, (0, 0))
    assert header(dep) == (LIB, NO_FLAGS, 1, 3, 0)
    assert library(dep) == (str(libs / "libttdep.so"), WRITABLE, None, None)
    assert header(missing) == (LIB, NO_FLAGS, 1, 4, 0)
    assert library(missing) == (missing_name, LibraryFlag(0), None, (-1, errno.ENOENT))
    assert header(repeat) == (LIB, REPEAT, 1, 5, 0)
    assert library(repeat) == library(missing)


def test_dlopen_by_bare_name_keeps_the_callers_run_path(
    agent: Agent, programs: dict[str, Path], tmp_path: Path, libs: Path
) -> None:
    """A program whose RUNPATH finds the plugin still finds it under the shim (the loader sees the
    program as the caller); what it loaded is reported by the end of the process."""
    exe = tmp_path / "dlopen_runpath"
    source = Path(__file__).parent / "shim" / "dlopen_lib.c"
    subprocess.run(
        [
            "gcc",
            "-O1",
            "-Wall",
            "-Werror",
            "-o",
            str(exe),
            str(source),
            f"-Wl,--enable-new-dtags,-rpath,{libs}",
        ],
        check=True,
    )
    res = run(exe, "libttplug.so", "libttmissing.so", env=shim_env(agent.path), cwd=tmp_path)
    assert res.stdout == "42\n"
    start, *loads = by_pid(agent.settle())[res.pid]
    assert start.kind == RecordKind.PROC_START
    assert sorted(library(r) for r in loads) == [
        (str(libs / "libttdep.so"), WRITABLE, None, None),
        (str(libs / "libttplug.so"), WRITABLE, None, None),
    ]


LIBA_C = "int tt_load_plugin(void);\nint tt_a_load(void) { return tt_load_plugin(); }\n"
LIBB_C = """#include <dlfcn.h>
int tt_load_plugin(void)
{
    void *h = dlopen("libttplug.so", RTLD_NOW);
    int (*answer)(void) = h ? (int (*)(void))dlsym(h, "tt_plugin_answer") : 0;
    return answer ? answer() : -1;
}
"""
MAINAB_C = """#include <stdio.h>
int tt_a_load(void);
int main(void) { printf("%d\\n", tt_a_load()); return 0; }
"""


def test_dlopen_by_bare_name_keeps_the_run_path_of_the_objects_that_loaded_the_caller(
    agent: Agent, tmp_path: Path, libs: Path
) -> None:
    """libtta (DT_RPATH: the plugin's directory) needs libttb (no run path), which dlopens the
    plugin by bare name: the loader finds it through libtta's DT_RPATH, under the shim as
    without it; what it loaded is reported by the end of the process."""
    own = tmp_path / "own"
    own.mkdir()
    for name, text in (("a.c", LIBA_C), ("b.c", LIBB_C), ("main.c", MAINAB_C)):
        (tmp_path / name).write_text(text)
    cc = ["gcc", "-O1", "-Wall", "-Werror", "-Wl,--disable-new-dtags"]
    subprocess.run([*cc, "-shared", "-fPIC", "-o", str(own / "libttb.so"), str(tmp_path / "b.c")], check=True)
    subprocess.run(
        [
            *cc,
            "-shared",
            "-fPIC",
            "-o",
            str(own / "libtta.so"),
            str(tmp_path / "a.c"),
            f"-L{own}",
            "-lttb",
            f"-Wl,-rpath,{libs}",
        ],
        check=True,
    )
    exe = tmp_path / "mainab"
    subprocess.run(
        [*cc, "-o", str(exe), str(tmp_path / "main.c"), f"-L{own}", "-ltta", f"-Wl,-rpath,{own}"], check=True
    )
    assert run(exe, env={}, cwd=tmp_path).stdout == "42\n"
    res = run(exe, env=shim_env(agent.path), cwd=tmp_path)
    assert res.stdout == "42\n"
    start, *loads = by_pid(agent.settle())[res.pid]
    assert start.kind == RecordKind.PROC_START
    assert sorted(library(r) for r in loads) == [
        (str(libs / "libttdep.so"), WRITABLE, None, None),
        (str(libs / "libttplug.so"), WRITABLE, None, None),
    ]


@pytest.mark.parametrize(
    "function", ["strcpy", "stpcpy", "sprintf", "mmap", "mprotect", "system", "popen", "capset"]
)
@pytest.mark.parametrize("active", [True, False])
def test_first_hooked_call_keeps_the_pending_dlerror(
    agent: Agent, programs: dict[str, Path], tmp_path: Path, function: str, active: bool
) -> None:
    """After a failed dlopen, the program's first call of a hooked function leaves the loader's
    error for dlerror() as it is without the shim (the shim resolves its functions at start)."""
    without = run(programs["dlerror_keep"], function, env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert "libtelltale-no-such-library.so" in without.stdout
    env = shim_env(agent.path if active else None)
    assert run(programs["dlerror_keep"], function, env=env, cwd=tmp_path).stdout == without.stdout


# ---- memory, capset, system, popen -----------------------------------------------------------


def test_write_execute_memory_is_reported_once_per_kind_of_call(
    agent: Agent, programs: dict[str, Path], tmp_path: Path
) -> None:
    """mmap, mprotect and pkey_mprotect asking for write and execute together are reported with
    their protection, flags and length; other protections are not; a failure keeps its errno."""
    res = run(programs["wx_memory"], env=shim_env(agent.path), cwd=tmp_path)
    page = int(res.stdout)
    recs = by_pid(agent.settle())[res.pid]
    assert [header(r) for r in recs] == [
        (RecordKind.PROC_START, NO_FLAGS, 1, 1, 0),
        (MEM, NO_FLAGS, 1, 2, 0),
        (MEM, NO_FLAGS, 1, 3, 0),
        (MEM, NO_FLAGS, 1, 4, 0),
        (MEM, NO_FLAGS, 1, 5, 0),
        (MEM, REPEAT, 1, 6, 0),
    ]
    assert [(r.function, r.protection, r.map_flags, r.length, r.result) for r in recs[1:]] == [
        ("mmap", PROT_RWX, MAP_PRIVATE_ANON, 2 * page, (0, 0)),
        ("mprotect", PROT_RWX, None, page, (0, 0)),
        ("pkey_mprotect", PROT_WX, None, page, (0, 0)),
        ("mmap", PROT_WX, MAP_PRIVATE_ANON | MAP_NORESERVE, 0, (-1, errno.EINVAL)),
        ("mmap", PROT_RWX, MAP_PRIVATE_ANON, 2 * page, (0, 0)),
    ]


def test_capset_is_reported_with_the_requested_sets(
    agent: Agent, programs: dict[str, Path], tmp_path: Path
) -> None:
    """capset: a CREDENTIALS record with the sets asked for (none when the kernel did not know the
    header's version); PROC_START carries the sets the process started with."""
    res = run(programs["capset_calls"], env=shim_env(agent.path), cwd=tmp_path)
    effective, permitted, inheritable = (int(v) for v in res.stdout.split())
    start, ok, bad, repeat = by_pid(agent.settle())[res.pid]
    assert start.capabilities == (effective, permitted, inheritable)
    assert [header(r) for r in (ok, bad, repeat)] == [
        (RecordKind.CREDENTIALS, NO_FLAGS, 1, 2, 0),
        (RecordKind.CREDENTIALS, NO_FLAGS, 1, 3, 0),
        (RecordKind.CREDENTIALS, REPEAT, 1, 4, 0),
    ]
    assert (ok.function, ok.result, ok.capabilities) == (
        "capset",
        (0, 0),
        (effective, permitted, inheritable),
    )
    assert (bad.function, bad.result, bad.capabilities) == ("capset", (-1, errno.EINVAL), None)
    assert repeat.capabilities == ok.capabilities


def test_system_and_popen_are_reported_as_shell_execs(
    agent: Agent, programs: dict[str, Path], tmp_path: Path
) -> None:
    """system and popen: an EXEC of /bin/sh -c command before the call (deduplicated like any
    exec); each shell then reports its own start."""
    res = run(programs["shell_calls"], env=shim_env(agent.path), cwd=tmp_path)
    assert res.stdout == "3 popen-ran\n"
    procs = by_pid(agent.settle())
    parent = procs.pop(res.pid)
    assert [header(r) for r in parent] == [
        (RecordKind.PROC_START, NO_FLAGS, 1, 1, 0),
        (RecordKind.EXEC, NO_FLAGS, 1, 2, 0),
        (RecordKind.EXEC, NO_FLAGS, 1, 3, 0),
        (RecordKind.EXEC, REPEAT, 1, 4, 0),
    ]
    assert [(r.variant, r.path, r.argv, r.result) for r in parent[1:]] == [
        (ExecVariant.SYSTEM, "/bin/sh", ("sh", "-c", "exit 3"), None),
        (ExecVariant.POPEN, "/bin/sh", ("sh", "-c", "echo popen-ran"), None),
        (ExecVariant.SYSTEM, "/bin/sh", ("sh", "-c", "exit 3"), None),
    ]
    shells = sorted(recs[0].argv or () for recs in procs.values())
    assert shells == [("sh", "-c", "echo popen-ran"), ("sh", "-c", "exit 3"), ("sh", "-c", "exit 3")]
    assert all(recs[0].kind == RecordKind.PROC_START and recs[0].ppid == res.pid for recs in procs.values())


# ---- through the agent's intake --------------------------------------------------------------

Check = Callable[[list[common_pb2.Event]], bool]


def _kind(events: list[common_pb2.Event], kind: int) -> list[common_pb2.Event]:
    return [e for e in events if e.kind == kind]


async def _events_of(
    program: Path, args: list[str], *, env: dict[str, str], tmp_path: Path, native: bool, done: Check
) -> list[common_pb2.Event]:
    """The events an intake (`native` or not) makes of what `program` sends, once `done` holds."""
    got: list[common_pb2.Event] = []

    def sink(events: list[bytes], workload: common_pb2.Workload | None) -> None:
        got.extend(common_pb2.Event.FromString(data) for data in events)

    sock = tmp_path / ("native.sock" if native else "python.sock")
    intake = Intake(sock, sink, Counters(), Workloads(), native=native)
    async with trio.open_nursery() as nursery:
        await nursery.start(intake.run)
        env = {**env, "TELLTALE_SOCKET": str(sock)}
        await trio.run_process([str(program), *args], env=env, cwd=tmp_path, capture_stdout=True)
        await eventually(lambda: done(got), f"the events of {program.name}")
        nursery.cancel_scope.cancel()
    return got


PATHS = [
    pytest.param(False, id="python"),
    pytest.param(
        True,
        id="native",
        marks=pytest.mark.skipif(native_records is None, reason="telltale._native._records is not built"),
    ),
]


@pytest.mark.parametrize("native", PATHS)
@trio.testing.trio_test
async def test_new_kinds_arrive_through_the_intake(
    programs: dict[str, Path],
    tmp_path: Path,
    libs: Path,
    native: bool,
) -> None:
    """LIBRARY_LOAD, MEMORY_PROTECT and system/popen EXECs become the same events on both decoding
    paths (the fast path hands what it does not know to the reference decoder)."""
    env = shim_env(None)
    lib_events = await _events_of(
        programs["dlopen_lib"],
        [str(libs / "libttplug.so"), "./none/libttmissing.so"],
        env=env,
        tmp_path=tmp_path,
        native=native,
        done=lambda got: len(_kind(got, common_pb2.EVENT_KIND_LIBRARY_LOAD)) >= 4,
    )
    plug, dep, missing, repeat = _kind(lib_events, common_pb2.EVENT_KIND_LIBRARY_LOAD)
    assert plug.library == common_pb2.LibraryDetail(path=str(libs / "libttplug.so"), writable_dir=True)
    assert (plug.result.known, plug.result.error_number) == (True, 0)
    assert plug.process.exe == str(programs["dlopen_lib"]), "the process is known from its start"
    assert dep.library.path == str(libs / "libttdep.so")
    assert (missing.library.path, missing.result.error_number) == ("./none/libttmissing.so", errno.ENOENT)
    assert (repeat.repeat, repeat.count) == (True, 1)

    mem_events = await _events_of(
        programs["wx_memory"],
        [],
        env=env,
        tmp_path=tmp_path,
        native=native,
        done=lambda got: len(_kind(got, common_pb2.EVENT_KIND_MEMORY_PROTECT)) >= 5,
    )
    first = _kind(mem_events, common_pb2.EVENT_KIND_MEMORY_PROTECT)[0]
    assert (first.memory.function, first.memory.protection, first.memory.flags) == ("mmap", PROT_RWX, 0x22)

    shell_events = await _events_of(
        programs["shell_calls"],
        [],
        env=env,
        tmp_path=tmp_path,
        native=native,
        done=lambda got: len(_kind(got, common_pb2.EVENT_KIND_EXEC)) >= 3,
    )
    system, popen = _kind(shell_events, common_pb2.EVENT_KIND_EXEC)[:2]
    assert (system.exec.variant, list(system.exec.argv)) == (
        common_pb2.EXEC_VARIANT_SYSTEM,
        ["sh", "-c", "exit 3"],
    )
    assert (popen.exec.variant, popen.exec.path) == (common_pb2.EXEC_VARIANT_POPEN, "/bin/sh")


@pytest.mark.parametrize(
    "native",
    [
        pytest.param(False, id="python"),
        pytest.param(
            True,
            id="native",
            marks=[
                pytest.mark.skipif(native_records is None, reason="telltale._native._records is not built"),
            ],
        ),
    ],
)
@trio.testing.trio_test
async def test_capset_sets_arrive_through_the_intake(
    programs: dict[str, Path],
    tmp_path: Path,
    native: bool,
) -> None:
    events = await _events_of(
        programs["capset_calls"],
        [],
        env=shim_env(None),
        tmp_path=tmp_path,
        native=native,
        done=lambda got: len(_kind(got, common_pb2.EVENT_KIND_CREDENTIALS)) >= 3,
    )
    start = _kind(events, common_pb2.EVENT_KIND_PROCESS_START)[0]
    ok = _kind(events, common_pb2.EVENT_KIND_CREDENTIALS)[0]
    assert ok.credentials.function == "capset"
    assert ok.credentials.capabilities_permitted == start.process.capabilities_permitted
    assert ok.credentials.capabilities_effective == start.process.capabilities_effective


# ---- the alerts they raise -------------------------------------------------------------------

POLICY = """\
apiVersion: telltale.dev/v1
kind: AlertPolicy
metadata: {name: Test}
spec:
  rules:
    library.writable_location: {params: {writable_by_user: true}}
    library.write_execute_memory: {}
    library.foreign_preload: {}
    library.unsafe_search_path: {}
    process.shell_launched: {}
"""


def test_the_engine_raises_library_memory_and_shell_alerts_from_these_events(
    agent: Agent, programs: dict[str, Path], tmp_path: Path, libs: Path
) -> None:
    """Real records, converted as the agent does, raise the catalog's alerts."""
    env = shim_env(agent.path)
    run(programs["dlopen_lib"], str(libs / "libttplug.so"), "libttmissing.so", env=env, cwd=tmp_path)
    run(programs["wx_memory"], env=env, cwd=tmp_path)
    run(programs["shell_calls"], env=env, cwd=tmp_path)
    preloaded = {**env, "LD_PRELOAD": f"{shim_path()}:{libs / 'libttdep.so'}", "LD_LIBRARY_PATH": "lib"}
    run(programs["proc_start"], env=preloaded, cwd=tmp_path)

    policy = CompiledPolicy.compile(parse_document(POLICY))
    workload = common_pb2.Workload(id="w-1", application="shop", component="api")
    fired: set[tuple[str, str]] = set()
    for records in by_pid(agent.settle()).values():
        process = common_pb2.ProcessInfo()
        for rec in records:
            if rec.kind == RecordKind.PROC_START:
                fill_process(process, rec)
            event = to_event(rec, "w-1", process)
            fired.update((f.alert_type, f.subject) for f in policy.evaluate(event, workload, rec.time_ns))
    assert {alert for alert, _ in fired} == {
        "library.writable_location",
        "library.write_execute_memory",
        "library.foreign_preload",
        "library.unsafe_search_path",
        "process.shell_launched",
    }
    assert ("library.writable_location", str(libs / "libttplug.so")) in fired
    assert ("library.writable_location", str(libs / "libttdep.so")) in fired
    assert ("process.shell_launched", "/bin/sh") in fired
    assert ("library.foreign_preload", str(libs / "libttdep.so")) in fired
    assert ("library.write_execute_memory", str(programs["wx_memory"])) in fired
