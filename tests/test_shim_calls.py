"""Library calls observed by the shim: unsafe C library functions and weak cryptography, keyed by
call site, and the module that made each call.

The C programs in tests/shim/calls/ are built with -fno-builtin (an optimising compiler otherwise
replaces strcpy and friends with inline code that no hook can see) and run with the shim preloaded
against the agent of tests/shimkit.py.
"""

from __future__ import annotations

import ctypes.util
import os
import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import recordkit
import shimkit
import trio
import trio.testing
from helpers import eventually
from recordkit import fld
from shimkit import NO_FLAGS, OPENSSL_HOOKS, Agent, Run, gcc, needs_gcc, run, shim_env

from telltale._native import shim_path
from telltale.engine.builtin import load_builtin_policies
from telltale.engine.evaluate import CompiledPolicy
from telltale.nodeagent import workload as descriptor
from telltale.nodeagent.batcher import Counters
from telltale.nodeagent.convert import to_event
from telltale.nodeagent.intake import Intake, Workloads
from telltale.nodeagent.records import (
    FieldTag,
    Record,
    RecordError,
    RecordFlag,
    RecordKind,
    decode,
)
from telltale.v1 import common_pb2

SOURCES = Path(__file__).parent / "shim" / "calls"
HAVE_OPENSSL_HEADERS = Path("/usr/include/openssl/evp.h").exists()

pytestmark = needs_gcc

agent = shimkit.agent


def _gcc(*args: str) -> None:
    gcc("-O2", "-fno-builtin", "-Wno-deprecated-declarations", *args)


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The programs of tests/shim/calls/, built once per module (crypto_evp only with OpenSSL's
    headers)."""
    out = tmp_path_factory.mktemp("shim-calls")
    built = {}
    for name in ("unsafe_calls", "bench_strcpy", "many_sites"):
        _gcc("-o", str(out / name), str(SOURCES / f"{name}.c"))
        built[name] = out / name
    lib = out / "libttcaller.so"
    _gcc("-shared", "-fPIC", "-o", str(lib), str(SOURCES / "caller_lib.c"))
    built["libttcaller.so"] = lib
    main = out / "caller_main"
    _gcc("-o", str(main), str(SOURCES / "caller_main.c"), f"-L{out}", "-lttcaller", f"-Wl,-rpath,{out}")
    built["caller_main"] = main
    if HAVE_OPENSSL_HEADERS:
        for name in ("crypto_evp", "lookup_jump", "crypto_dlerror"):
            _gcc("-o", str(out / name), str(SOURCES / f"{name}.c"), "-lcrypto")
            built[name] = out / name
        plugin = out / "libttcrypto.so"
        _gcc("-shared", "-fPIC", "-o", str(plugin), str(SOURCES / "crypto_plugin.c"), "-lcrypto")
        built["libttcrypto.so"] = plugin
        private = out / "crypto_private"
        _gcc("-pthread", "-o", str(private), str(SOURCES / "crypto_private.c"), f"-Wl,-rpath,{out}")
        built["crypto_private"] = private
    return built


def of_kind(records: list[Record], kind: RecordKind) -> list[Record]:
    return [r for r in records if r.kind == kind]


def calls_of(records: list[Record]) -> list[tuple[str | None, RecordFlag, int, str | None]]:
    """(function, flags, count, caller) of every UNSAFE_CALL, in arrival order."""
    return [(r.function, r.flags, r.count, r.caller) for r in of_kind(records, RecordKind.UNSAFE_CALL)]


# ---- unsafe calls ------------------------------------------------------------------------------


def test_two_call_sites_send_two_records(agent: Agent, programs: dict[str, Path], tmp_path: Path) -> None:
    """strcpy from two call sites yields one UNSAFE_CALL per site, named after the program."""
    exe = str(programs["unsafe_calls"])
    run(programs["unsafe_calls"], "two", env=shim_env(agent.path), cwd=tmp_path)
    records = agent.records()
    assert calls_of(records) == [("strcpy", NO_FLAGS, 1, exe), ("strcpy", NO_FLAGS, 1, exe)]
    first, second = of_kind(records, RecordKind.UNSAFE_CALL)
    assert first.call_site is not None
    assert second.call_site is not None
    assert 0 < first.call_site < second.call_site < first.call_site + 256  # module offsets, nearby
    assert first.seq < second.seq


def test_repeats_from_one_call_site_are_counted(
    agent: Agent, programs: dict[str, Path], tmp_path: Path
) -> None:
    """1000 strcpy calls from one site: one record, then one REPEAT summary of the 999 others."""
    exe = str(programs["unsafe_calls"])
    run(programs["unsafe_calls"], "loop", "1000", env=shim_env(agent.path), cwd=tmp_path)
    records = agent.records()
    assert calls_of(records) == [("strcpy", NO_FLAGS, 1, exe), ("strcpy", RecordFlag.REPEAT, 999, exe)]
    first, summary = of_kind(records, RecordKind.UNSAFE_CALL)
    assert first.call_site == summary.call_site


def test_every_unsafe_function_is_reported(agent: Agent, programs: dict[str, Path], tmp_path: Path) -> None:
    """Each hooked unsafe function called once is reported once, by name."""
    run(programs["unsafe_calls"], "each", env=shim_env(agent.path), cwd=tmp_path)
    names = [r.function for r in of_kind(agent.records(), RecordKind.UNSAFE_CALL)]
    assert names == [
        "strcpy",
        "strcat",
        "stpcpy",
        "sprintf",
        "vsprintf",
        "gets",
        "getwd",
        "mktemp",
        "tmpnam",
        "tempnam",
    ]


def test_errno_is_kept_across_a_first_occurrence(
    agent: Agent, programs: dict[str, Path], tmp_path: Path
) -> None:
    """Reporting a first call (a send to the agent) leaves the program's errno as it was."""
    run(programs["unsafe_calls"], "errno", env=shim_env(agent.path), cwd=tmp_path)
    assert len(of_kind(agent.records(), RecordKind.UNSAFE_CALL)) == 2


def test_calls_are_not_reported_without_an_agent(programs: dict[str, Path], tmp_path: Path) -> None:
    """With the shim inert the hooked functions work as usual."""
    res = run(programs["unsafe_calls"], "loop", "100000", env=shim_env(None), cwd=tmp_path)
    assert res.stdout == "again\n"


def test_the_caller_is_the_module_that_made_the_call(
    agent: Agent, programs: dict[str, Path], tmp_path: Path
) -> None:
    """A call made by a shared library names the library; one made by the program names the program."""
    run(programs["caller_main"], env=shim_env(agent.path), cwd=tmp_path)
    callers = [r.caller for r in of_kind(agent.records(), RecordKind.UNSAFE_CALL)]
    assert callers == [str(programs["caller_main"]), str(programs["libttcaller.so"])]


def test_other_records_name_their_caller_too(agent: Agent, programs: dict[str, Path], tmp_path: Path) -> None:
    """CALLER is on every first occurrence: a connect made by Python's socket module names it."""
    code = "import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM).connect(('127.0.0.1', 9))\n"
    run(Path(sys.executable), "-S", "-c", code, env=shim_env(agent.path), cwd=tmp_path)
    (conn,) = of_kind(agent.records(), RecordKind.CONNECT)
    assert conn.caller is not None
    assert Path(conn.caller).name.startswith("_socket"), conn.caller


# ---- weak cryptography -------------------------------------------------------------------------


def crypto_of(records: list[Record]) -> list[tuple[str | None, str | None, str | None, str | None, int]]:
    """(function, algorithm, protocol, purpose, count) of every CRYPTO record, in arrival order."""
    return [
        (r.function, r.algorithm, r.protocol, r.purpose, r.count) for r in of_kind(records, RecordKind.CRYPTO)
    ]


@pytest.mark.skipif(not HAVE_OPENSSL_HEADERS, reason="needs OpenSSL's headers")
def test_weak_crypto_from_a_program(agent: Agent, programs: dict[str, Path], tmp_path: Path) -> None:
    """Weak digests and ciphers are reported once per call site; strong and non-security fetches
    are not."""
    exe = str(programs["crypto_evp"])
    run(programs["crypto_evp"], env=shim_env(agent.path), cwd=tmp_path)
    records = agent.records()
    assert crypto_of(records) == [
        ("EVP_md5", "MD5", None, "digest", 1),
        ("EVP_sha1", "SHA1", None, "digest", 1),
        ("EVP_MD_fetch", "MD5", None, "digest", 1),  # MD5(), a generic name, is not hooked
        ("EVP_des_ede3_cbc", "3DES", None, "cipher", 1),
        ("EVP_sha1", "SHA1", None, "digest", 1),  # the second call: a REPEAT summary at exit
    ]
    crypto = of_kind(records, RecordKind.CRYPTO)
    assert crypto[-1].flags == RecordFlag.REPEAT
    assert {r.caller for r in crypto} == {exe}
    library = crypto[0].library
    assert library is not None
    assert Path(library).name.startswith("libcrypto.so")


@pytest.mark.skipif(ctypes.util.find_library("ssl") is None, reason="needs OpenSSL")
def test_weak_crypto_from_python(agent: Agent, tmp_path: Path) -> None:
    """Python's hashlib.md5 and an SSL context allowing TLS 1.0 are reported, named after the
    extension modules that asked; hashlib's own probes (usedforsecurity=False) and libssl's
    internal fetches are not."""
    code = (
        "import hashlib, ssl, warnings\n"
        "warnings.simplefilter('ignore')\n"
        "hashlib.md5(b'x').hexdigest()\n"
        "hashlib.sha256(b'x').hexdigest()\n"
        "ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)\n"
        "ctx.minimum_version = ssl.TLSVersion.TLSv1\n"
    )
    run(Path(sys.executable), "-c", code, env=shim_env(agent.path), cwd=tmp_path)
    records = of_kind(agent.records(), RecordKind.CRYPTO)
    assert crypto_of(records) == [
        ("EVP_MD_fetch", "MD5", None, "digest", 1),
        ("SSL_CTX_ctrl", None, "TLSv1.0", "tls", 1),
    ]
    digest, tls = records
    assert Path(digest.caller or "").name.startswith("_hashlib")
    assert Path(tls.caller or "").name.startswith("_ssl")
    assert Path(tls.library or "").name.startswith("libssl.so")


def test_openssl_hooks_carry_openssl_3s_version() -> None:
    """The OpenSSL hooks are defined as OpenSSL 3's (name@@OPENSSL_3.0.0), so a reference to
    another version cannot bind to them; the generic MD5, MD5_Init, SHA1, SHA1_Init are not
    hooked."""
    out = subprocess.run(
        ["nm", "-D", "--defined-only", str(shim_path())], check=True, capture_output=True, text=True
    ).stdout
    names = {line.split()[-1] for line in out.splitlines() if line.strip()}
    assert {f"{name}@@OPENSSL_3.0.0" for name in OPENSSL_HOOKS} <= names
    assert not {n for n in names if n.split("@")[0] in {"MD5", "MD5_Init", "SHA1", "SHA1_Init"}}


def _two_openssl(tmp_path: Path) -> tuple[Path, Path]:
    """Fake libcrypto 1.1 and 3 (EVP_md5 versioned OPENSSL_1_1_0 and OPENSSL_3.0.0, each
    returning its own marker), a plugin linked against 1.1 and a program linked against 3."""
    source = str(SOURCES / "two_openssl.c")
    for version, node in (("1.1", "OPENSSL_1_1_0"), ("3", "OPENSSL_3.0.0")):
        lib_dir = tmp_path / f"ssl{version}"
        lib_dir.mkdir()
        script = tmp_path / f"{node}.map"
        script.write_text(f"{node} {{ global: EVP_md5; local: *; }};\n")
        name = f"libcrypto.so.{version}"
        _gcc(
            "-shared",
            "-fPIC",
            f'-DFAKE_LIB="{version}"',
            f"-Wl,--version-script={script}",
            f"-Wl,-soname,{name}",
            "-o",
            str(lib_dir / name),
            source,
        )
    plugin = tmp_path / "plugin.so"
    old = tmp_path / "ssl1.1"
    _gcc(
        "-shared",
        "-fPIC",
        "-DPLUGIN",
        "-o",
        str(plugin),
        source,
        f"-L{old}",
        "-l:libcrypto.so.1.1",
        f"-Wl,-rpath,{old}",
    )
    program = tmp_path / "two_openssl"
    new = tmp_path / "ssl3"
    _gcc("-o", str(program), source, f"-L{new}", "-l:libcrypto.so.3", f"-Wl,-rpath,{new}")
    return program, plugin


def test_each_openssl_version_keeps_its_own_functions(agent: Agent, tmp_path: Path) -> None:
    """With OpenSSL 1.1 and 3 in one process, code linked against each gets its own library's
    EVP_md5, with or without the shim (inert or active); the shim reports the OpenSSL 3 call."""
    program, plugin = _two_openssl(tmp_path)
    expected = "program: md5 of libcrypto 3\nplugin: md5 of libcrypto 1.1\n"
    plain = run(program, str(plugin), env={"PATH": os.environ.get("PATH", "/bin")}, cwd=tmp_path)
    inert = run(program, str(plugin), env=shim_env(None), cwd=tmp_path)
    active = run(program, str(plugin), env=shim_env(agent.path), cwd=tmp_path)
    assert plain.stdout == inert.stdout == active.stdout == expected
    records = of_kind(agent.records(), RecordKind.CRYPTO)
    assert crypto_of(records) == [("EVP_md5", "MD5", None, "digest", 1)]
    assert records[0].caller == str(program)
    assert records[0].library == str(tmp_path / "ssl3" / "libcrypto.so.3")


def test_openssl_loaded_below_its_link_address_is_read_right(agent: Agent, tmp_path: Path) -> None:
    """A libcrypto.so.3 linked at the top of the address space (-Ttext-segment) is loaded below its
    link address, so its load offset wraps around: the shim reads its dynamic section as the
    loader does (relocated in place, being writable) instead of guessing from the values, finds
    EVP_md5 and reports its use, with the shim active or inert."""
    lib_dir = tmp_path / "high"
    lib_dir.mkdir()
    script = tmp_path / "openssl3.map"
    script.write_text("OPENSSL_3.0.0 { global: EVP_md5; local: *; };\n")
    _gcc(
        "-shared",
        "-fPIC",
        '-DFAKE_LIB="3"',
        f"-Wl,--version-script={script}",
        "-Wl,-soname,libcrypto.so.3",
        "-Wl,-Ttext-segment=0x7fffffffe000",
        "-o",
        str(lib_dir / "libcrypto.so.3"),
        str(SOURCES / "two_openssl.c"),
    )
    program = tmp_path / "md5_main"
    _gcc(
        "-o",
        str(program),
        str(SOURCES / "md5_main.c"),
        f"-L{lib_dir}",
        "-l:libcrypto.so.3",
        f"-Wl,-rpath,{lib_dir}",
    )
    plain = run(program, env={"PATH": os.environ.get("PATH", "/bin")}, cwd=tmp_path)
    inert = run(program, env=shim_env(None), cwd=tmp_path)
    active = run(program, env=shim_env(agent.path), cwd=tmp_path)
    assert plain.stdout == inert.stdout == active.stdout == "md5 of libcrypto 3\n"
    records = of_kind(agent.records(), RecordKind.CRYPTO)
    assert crypto_of(records) == [("EVP_md5", "MD5", None, "digest", 1)]
    assert records[0].library == str(lib_dir / "libcrypto.so.3")


def test_a_gnu_hash_chain_without_its_end_is_bounded(tmp_path: Path) -> None:
    """The shim's symbol lookup (shim/elfsym.c, built into a test program) stops a GNU hash chain
    that lacks its end bit at the last symbol, instead of reading on past the table (here into an
    inaccessible page)."""
    program = tmp_path / "elfsym_chain"
    shim_dir = Path(__file__).parents[1] / "shim"
    gcc(
        "-O1",
        "-D_GNU_SOURCE",
        f"-I{shim_dir}",
        "-o",
        str(program),
        str(Path(__file__).parent / "shim" / "units" / "elfsym_chain.c"),
        str(shim_dir / "elfsym.c"),
    )
    res = run(program, env={"PATH": os.environ.get("PATH", "/bin")}, cwd=tmp_path, check=False)
    assert (res.returncode, res.stdout) == (0, "absent\n"), res


@pytest.mark.skipif(not HAVE_OPENSSL_HEADERS, reason="needs OpenSSL's headers")
def test_first_openssl_call_keeps_a_pending_dlerror(
    agent: Agent, programs: dict[str, Path], tmp_path: Path
) -> None:
    """A program's first EVP_md5 call leaves the error of its failed dlopen for dlerror(), with the
    shim inert or active (the real functions were found at start), and is reported."""
    program = programs["crypto_dlerror"]
    plain = run(program, env={"PATH": os.environ.get("PATH", "/bin")}, cwd=tmp_path)
    assert plain.stdout.startswith("16 libtelltale-no-such-library.so: ")
    inert = run(program, env=shim_env(None), cwd=tmp_path)
    active = run(program, env=shim_env(agent.path), cwd=tmp_path)
    assert plain.stdout == inert.stdout == active.stdout
    assert crypto_of(agent.records()) == [("EVP_md5", "MD5", None, "digest", 1)]


@pytest.mark.skipif(not HAVE_OPENSSL_HEADERS, reason="needs OpenSSL's headers")
@pytest.mark.parametrize("how", ["path", "bare name"])
def test_openssl_loaded_privately_is_reported_and_keeps_dlerror(
    agent: Agent, programs: dict[str, Path], tmp_path: Path, how: str
) -> None:
    """A plugin loaded without RTLD_GLOBAL, bringing its own libcrypto.so.3, gets the real EVP_md5
    and is reported, and its first call leaves the program's pending dlerror() as it was: whether
    the shim found the function after the dlopen (a path) or finds it at the call (a bare name,
    passed straight to the loader)."""
    plugin = programs["libttcrypto.so"]
    name = str(plugin) if how == "path" else plugin.name
    program = programs["crypto_private"]
    plain = run(program, name, "dlerror", env={"PATH": os.environ.get("PATH", "/bin")}, cwd=tmp_path)
    assert plain.stdout.startswith("16 libtelltale-no-such-library.so: ")
    inert = run(program, name, "dlerror", env=shim_env(None), cwd=tmp_path)
    active = run(program, name, "dlerror", env=shim_env(agent.path), cwd=tmp_path)
    assert plain.stdout == inert.stdout == active.stdout
    records = of_kind(agent.records(), RecordKind.CRYPTO)
    assert crypto_of(records) == [("EVP_md5", "MD5", None, "digest", 1)]
    assert records[0].caller == str(plugin)
    assert records[0].library is not None
    assert Path(records[0].library).name == "libcrypto.so.3"


@pytest.mark.skipif(not HAVE_OPENSSL_HEADERS, reason="needs OpenSSL's headers")
def test_first_openssl_call_in_a_fork_child_does_not_wait_for_the_loader(
    agent: Agent, programs: dict[str, Path], tmp_path: Path
) -> None:
    """A fork child whose parent had another thread holding the loader's lock makes the first call
    of a privately loaded OpenSSL's EVP_md5: it gets the function and is reported, without taking
    that lock (which nobody would release in the child)."""
    plugin = programs["libttcrypto.so"]
    res = run(
        programs["crypto_private"], plugin.name, "fork", env=shim_env(agent.path), cwd=tmp_path, check=False
    )
    assert (res.returncode, res.stdout) == (0, "16\n"), res
    records = [r for r in of_kind(agent.records(), RecordKind.CRYPTO) if r.pid != res.pid]
    assert crypto_of(records) == [("EVP_md5", "MD5", None, "digest", 1)]
    assert records[0].caller == str(plugin)


def _unload_setup(tmp_path: Path, plugins: int) -> tuple[Path, Path]:
    """crypto_unload, DIR/libplug1.so .. libplugN.so (distinct files, so distinct objects) and a
    fake libcrypto.so.3 in DIR/fake (EVP_md5@@OPENSSL_3.0.0 returning a marker; unlike OpenSSL's,
    it does not keep itself loaded)."""
    program = tmp_path / "crypto_unload"
    _gcc("-pthread", "-o", str(program), str(SOURCES / "crypto_unload.c"))
    plugin_src = tmp_path / "plug.c"
    plugin_src.write_text("int plug_value(void) { return 1; }\n")
    first = tmp_path / "libplug1.so"
    _gcc("-shared", "-fPIC", "-o", str(first), str(plugin_src))
    for i in range(2, plugins + 1):
        shutil.copyfile(first, tmp_path / f"libplug{i}.so")
    fake = tmp_path / "fake"
    fake.mkdir()
    script = tmp_path / "openssl3.map"
    script.write_text("OPENSSL_3.0.0 { global: EVP_md5; local: *; };\n")
    _gcc(
        "-shared",
        "-fPIC",
        '-DFAKE_LIB="3"',
        f"-Wl,--version-script={script}",
        "-Wl,-soname,libcrypto.so.3",
        "-o",
        str(fake / "libcrypto.so.3"),
        str(SOURCES / "two_openssl.c"),
    )
    return program, fake


@pytest.mark.skipif(ctypes.util.find_library("crypto") is None, reason="needs OpenSSL")
def test_evp_md5_never_fails_while_other_libraries_are_unloaded(agent: Agent, tmp_path: Path) -> None:
    """OpenSSL 3 loaded by a bare name (passed straight to the loader), EVP_md5 called in a loop
    by one thread while the main thread unloads 300 plugins: every call gets the real function,
    with the shim active or inert (a stress test: the unlocked walk of the loader's list this
    replaces returned NULL in most runs)."""
    program, _ = _unload_setup(tmp_path, 300)
    for _ in range(3):
        for env in (shim_env(agent.path), shim_env(None)):
            res = run(program, str(tmp_path), "300", env=env, cwd=tmp_path, check=False)
            assert res.returncode == 0, res


@pytest.mark.parametrize("active", [True, False], ids=["active", "inert"])
def test_openssl_loaded_by_a_bare_name_is_found_once_and_pinned(
    agent: Agent, tmp_path: Path, active: bool
) -> None:
    """A libcrypto.so.3 brought in by a bare-name dlopen has its function found once and kept:
    the library is pinned by the shim (still loaded after the program's dlclose), every call is
    counted at its one call site (the first reported, the others dedup hits), active or inert;
    not looked up again at each call from the loader's list."""
    program, fake = _unload_setup(tmp_path, 5)
    env = shim_env(agent.path if active else None, LD_LIBRARY_PATH=str(fake))
    res = run(program, str(tmp_path), "5", env=env, cwd=tmp_path)
    lines = res.stdout.splitlines()
    assert lines[1:] == ["pinned"], res
    calls = int(lines[0].split()[1])
    records = of_kind(agent.records(), RecordKind.CRYPTO)
    if not active:
        assert records == []
        return
    assert records[0].flags == NO_FLAGS
    assert {r.flags for r in records[1:]} <= {RecordFlag.REPEAT}
    assert {(r.function, r.call_site, r.library) for r in records} == {
        ("EVP_md5", records[0].call_site, str(fake / "libcrypto.so.3"))
    }
    assert sum(r.count for r in records) == calls


@pytest.mark.skipif(not HAVE_OPENSSL_HEADERS, reason="needs OpenSSL's headers")
def test_a_lookup_left_by_siglongjmp_leaves_the_shim_working(
    agent: Agent, programs: dict[str, Path], tmp_path: Path
) -> None:
    """A lookup a SIGALRM handler jumps out of (libcurl's resolver timeout) does not leave the
    thread's shim busy: EVP_md5 gets the real function at both of its call sites; the first call,
    made from deeper than the abandoned lookup's frame, is taken for the resolver's and not
    reported, the next lookup (from main, above it) takes the guard back and is reported, and so
    is what follows: the second EVP_md5 call site and the connect."""
    fifo = tmp_path / "aliases"
    os.mkfifo(fifo)  # HOSTALIASES nobody writes: the resolver's open of it blocks
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
    res = run(
        programs["lookup_jump"], str(fifo), str(port), env=shim_env(agent.path), cwd=tmp_path, check=False
    )
    if res.returncode == 77:
        pytest.skip("the name lookup did not wait on HOSTALIASES here (another hosts source answered)")
    assert (res.returncode, res.stdout) == (0, "timed out\n"), res
    records = agent.records()
    assert [(r.kind, r.name) for r in records if r.kind == RecordKind.RESOLVE] == [
        (RecordKind.RESOLVE, "localhost")
    ]
    assert crypto_of(of_kind(records, RecordKind.CRYPTO)) == [("EVP_md5", "MD5", None, "digest", 1)]
    (connect,) = of_kind(records, RecordKind.CONNECT)
    assert connect.sockaddr is not None
    assert (connect.sockaddr.address, connect.sockaddr.port) == ("127.0.0.1", port)


def test_the_engine_raises_the_matching_alerts(
    agent: Agent, programs: dict[str, Path], tmp_path: Path
) -> None:
    """Converted UNSAFE_CALL and CRYPTO events raise call.unsafe_function, call.weak_crypto and
    call.old_tls under the Max Alert policy."""
    run(programs["unsafe_calls"], "two", env=shim_env(agent.path), cwd=tmp_path)
    code = (
        "import ssl, warnings\n"
        "warnings.simplefilter('ignore')\n"
        "ssl.SSLContext().minimum_version = ssl.TLSVersion.TLSv1_1\n"
    )
    run(Path(sys.executable), "-c", code, env=shim_env(agent.path), cwd=tmp_path)
    records = agent.records()
    policy = CompiledPolicy.compile(load_builtin_policies()["Max Alert"])
    workload = common_pb2.Workload(id="w-1", application="shop", component="api")
    found = set()
    for rec in of_kind(records, RecordKind.UNSAFE_CALL) + of_kind(records, RecordKind.CRYPTO):
        for finding in policy.evaluate(to_event(rec, "w-1", None), workload, 1):
            found.add((finding.alert_type, finding.subject))
    exe = str(programs["unsafe_calls"])
    assert (("call.unsafe_function", f"strcpy in {exe}")) in found
    assert ("call.old_tls", "TLSv1.1") in found
    digest = to_event(
        Record(
            kind=RecordKind.CRYPTO,
            flags=NO_FLAGS,
            pid=1,
            ppid=0,
            tid=1,
            count=1,
            time_ns=1,
            dropped=0,
            seq=1,
            function="EVP_md5",
            algorithm="MD5",
            purpose="digest",
            library="/usr/lib/libcrypto.so.3",
        ),
        "w-1",
        None,
    )
    (weak,) = policy.evaluate(digest, workload, 1)
    assert (weak.alert_type, weak.subject) == ("call.weak_crypto", "MD5 (digest)")


# ---- speed ---------------------------------------------------------------------------------------


def test_a_repeated_call_site_costs_little(agent: Agent, programs: dict[str, Path], tmp_path: Path) -> None:
    """strcpy from a known call site costs a few nanoseconds more than without the shim."""
    bench = programs["bench_strcpy"]
    plain_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    plain, shimmed = [], []
    for _ in range(3):  # interleaved, best of three
        plain.append(float(run(bench, "2000000", env=plain_env, cwd=tmp_path).stdout))
        shimmed.append(float(run(bench, "2000000", env=shim_env(agent.path), cwd=tmp_path).stdout))
    assert min(shimmed) - min(plain) < 25.0, (plain, shimmed)


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_a_known_call_site_past_its_first_slot_makes_no_system_call(
    agent: Agent, programs: dict[str, Path], tmp_path: Path
) -> None:
    """512 call sites, many of them past their first slot of the call-site table, called 50 times
    each: only the first call from each site asks getpid (whether it runs in a process sharing
    the parent's memory), not the repeats."""
    summary = tmp_path / "strace.out"
    strace = Path(shutil.which("strace") or "strace")
    args = ("-f", "-c", "-e", "trace=getpid", "-o", str(summary), str(programs["many_sites"]), "50")
    run(strace, *args, env=shim_env(agent.path), cwd=tmp_path)
    calls = [int(line.split()[3]) for line in summary.read_text().splitlines() if line.endswith(" getpid")]
    assert calls, summary.read_text()
    assert calls[0] < 512 + 64, summary.read_text()
    reported = [
        r for r in agent.records() if r.kind == RecordKind.UNSAFE_CALL and not r.flags & RecordFlag.REPEAT
    ]
    assert len(reported) == 512


# ---- decoding and conversion -----------------------------------------------------------------------


def message(kind: int, *fields: bytes) -> bytes:
    return recordkit.rec(*fields, kind=kind, pid=10, ppid=9, tid=10, time_ns=5, seq=2)


SITE = fld(FieldTag.CALL_SITE, struct.pack("<Q", 0x1234))
CALLER = fld(FieldTag.CALLER, b"/usr/lib/libold.so.1")


def test_unsafe_call_record_decodes_and_converts() -> None:
    """UNSAFE_CALL carries the function, call site and caller; the Event has CallDetail and
    caller_module."""
    rec = decode(message(18, fld(FieldTag.FUNCTION, b"strcpy"), SITE, CALLER))
    assert (rec.kind, rec.function, rec.call_site, rec.caller) == (
        RecordKind.UNSAFE_CALL,
        "strcpy",
        0x1234,
        "/usr/lib/libold.so.1",
    )
    event = to_event(rec, "w-1", None)
    assert event.kind == common_pb2.EVENT_KIND_UNSAFE_CALL
    assert event.call.function == "strcpy"
    assert event.caller_module == "/usr/lib/libold.so.1"


def test_crypto_record_decodes_and_converts() -> None:
    """CRYPTO carries algorithm or protocol version, library and purpose into CryptoDetail."""
    rec = decode(
        message(
            19,
            fld(FieldTag.FUNCTION, b"SSL_CTX_ctrl"),
            fld(FieldTag.PROTOCOL, b"TLSv1.0"),
            fld(FieldTag.LIBRARY, b"/usr/lib/libssl.so.3"),
            fld(FieldTag.PURPOSE, b"tls"),
            CALLER,
        )
    )
    event = to_event(rec, "w-1", None)
    assert event.kind == common_pb2.EVENT_KIND_CRYPTO
    assert event.crypto == common_pb2.CryptoDetail(
        protocol_version="TLSv1.0", library="/usr/lib/libssl.so.3", purpose="tls"
    )
    assert event.caller_module == "/usr/lib/libold.so.1"


def test_caller_is_decoded_for_every_kind() -> None:
    """CALLER on an existing kind becomes the Event's caller_module."""
    sockaddr = fld(FieldTag.SOCKADDR, struct.pack("<H", 2) + bytes(14))
    event = to_event(decode(message(int(RecordKind.CONNECT), sockaddr, CALLER)), "w-1", None)
    assert event.caller_module == "/usr/lib/libold.so.1"
    assert to_event(decode(message(int(RecordKind.CONNECT), sockaddr)), "w-1", None).caller_module == ""


def test_call_site_is_only_known_in_call_kinds() -> None:
    """CALL_SITE and the crypto tags elsewhere are skipped like unknown tags."""
    bad = fld(FieldTag.CALL_SITE, b"\x01")
    assert decode(message(int(RecordKind.CONNECT), bad)).call_site is None


@pytest.mark.parametrize(
    ("kind", "field", "reason"),
    [
        (18, fld(FieldTag.CALL_SITE, b"\x01\x02\x03\x04"), "bad_field"),
        (19, fld(FieldTag.CALL_SITE, bytes(9)), "bad_field"),
        (18, fld(FieldTag.CALLER, b""), "bad_field"),
        (3, fld(FieldTag.CALLER, b"x" * 513), "bad_field"),
        (19, fld(FieldTag.ALGORITHM, b"M" * 33), "bad_field"),
        (19, fld(FieldTag.PROTOCOL, b""), "bad_field"),
        (19, fld(FieldTag.PURPOSE, b"p" * 33), "bad_field"),
        (19, fld(FieldTag.LIBRARY, b"l" * 513), "bad_field"),
        (18, CALLER + CALLER, "duplicate_field"),
        (19, fld(FieldTag.ALGORITHM, b"MD5") + fld(FieldTag.ALGORITHM, b"SHA1"), "duplicate_field"),
        (18, fld(FieldTag.CALLER, b"/lib/x")[:-1], "field_overrun"),
    ],
)
def test_malformed_call_records_are_rejected(kind: int, field: bytes, reason: str) -> None:
    """Wrong sizes, empty or oversized text, and repeated fields raise RecordError."""
    with pytest.raises(RecordError) as err:
        decode(message(kind, field))
    assert err.value.reason == reason


@trio.testing.trio_test
async def test_call_events_arrive_through_the_native_intake(tmp_path: Path) -> None:
    """A real shim's UNSAFE_CALL records reach the sink of an Intake using the native decoder."""
    pytest.importorskip("telltale._native._records")
    out = tmp_path / "unsafe_calls"
    _gcc("-o", str(out), str(SOURCES / "unsafe_calls.c"))
    events: list[common_pb2.Event] = []

    def sink(batch: list[bytes], workload: common_pb2.Workload | None) -> None:
        events.extend(common_pb2.Event.FromString(data) for data in batch)

    def calls() -> list[common_pb2.Event]:
        return [e for e in events if e.kind == common_pb2.EVENT_KIND_UNSAFE_CALL]

    def workload() -> Run:
        return run(out, "two", env=shim_env(sock, workload=descriptor.encode(shop)), cwd=tmp_path)

    sock = tmp_path / "agent.sock"
    shop = common_pb2.Workload(id="w-shop", application="shop", component="api")
    async with trio.open_nursery() as nursery:
        await nursery.start(Intake(sock, sink, Counters(), Workloads(), native=True).run)
        await trio.to_thread.run_sync(workload)
        await eventually(lambda: len(calls()) == 2, "two UNSAFE_CALL events")
        nursery.cancel_scope.cancel()
    seen = [(e.call.function, e.caller_module, e.workload_id) for e in calls()]
    assert seen == [("strcpy", str(out), "w-shop")] * 2


def test_call_kinds_take_the_reference_path_natively() -> None:
    """The native fast path hands UNSAFE_CALL and CRYPTO records back to the reference decoder."""
    native = pytest.importorskip("telltale._native._records")
    for kind in (18, 19):
        raw = message(kind, fld(FieldTag.FUNCTION, b"strcpy"), SITE, CALLER)
        assert native.encode(raw) == raw


def test_caller_of_existing_kinds_survives_the_native_path() -> None:
    """A CONNECT with CALLER encoded natively names its caller like the reference path."""
    native = pytest.importorskip("telltale._native._records")
    sockaddr = fld(FieldTag.SOCKADDR, struct.pack("<H", 2) + bytes(14))
    raw = message(int(RecordKind.CONNECT), sockaddr, CALLER)
    item = native.encode(raw)
    assert isinstance(item, tuple)
    assert common_pb2.Event.FromString(item[4]).caller_module == "/usr/lib/libold.so.1"
