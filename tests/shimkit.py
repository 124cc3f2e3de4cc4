"""The harness of the shim tests: an agent socket that decodes every record a workload sends, the
C programs of tests/shim/ built once per session, and running a program with the shim preloaded.

Test modules take the fixtures by assignment (`agent = shimkit.agent`)."""

from __future__ import annotations

import os
import selectors
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from telltale._native import shim_path
from telltale.nodeagent.records import Record, RecordError, RecordFlag, RecordKind, SockAddr, decode

SOURCES = Path(__file__).parent / "shim"
NO_FLAGS = RecordFlag(0)

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build test programs")


def gcc(*args: str) -> None:
    """Runs gcc with debug information and every warning an error; raises CalledProcessError when
    it fails."""
    subprocess.run(["gcc", "-g", "-Wall", "-Wextra", "-Werror", *args], check=True, capture_output=True)


# ---- agent side ------------------------------------------------------------------------------


@dataclass
class Received:
    """One record and the connection it came on."""

    conn: int  # accept order, from 0
    peer_pid: int  # SO_PEERCRED of the connection: the process that connected
    record: Record


@dataclass
class Agent:
    """A SOCK_SEQPACKET listener that accepts every connection and decodes every message on a
    background thread."""

    path: Path
    received: list[Received] = field(default_factory=list)
    errors: list[RecordError] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock.bind(str(self.path))
        self._sock.listen(128)
        self._sock.setblocking(False)
        self._lock = threading.Lock()
        self._iteration = 0
        self._last_idle = -1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="agent", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._sock, selectors.EVENT_READ)
        open_conns: dict[socket.socket, tuple[int, int]] = {}
        accepted = 0
        while not self._stop.is_set():
            with self._lock:
                iteration = self._iteration
                self._iteration += 1
            events = sel.select(timeout=0.02)
            for key, _ in events:
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._sock:
                    conn, _ = self._sock.accept()
                    conn.setblocking(False)
                    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
                    open_conns[conn] = (accepted, struct.unpack("3i", creds)[0])
                    accepted += 1
                    sel.register(conn, selectors.EVENT_READ)
                    continue
                if self._drain(sock, *open_conns[sock]):
                    sel.unregister(sock)
                    del open_conns[sock]
                    sock.close()
            if not events and not open_conns:
                with self._lock:
                    self._last_idle = iteration
        for sock in open_conns:
            sock.close()
        sel.close()

    def _drain(self, sock: socket.socket, conn: int, peer_pid: int) -> bool:
        """Reads every queued message; True at end of stream."""
        while True:
            try:
                msg = sock.recv(65536)
            except BlockingIOError:
                return False
            if not msg:
                return True
            try:
                rec = decode(msg)
            except RecordError as exc:
                with self._lock:
                    self.errors.append(exc)
                continue
            with self._lock:
                self.received.append(Received(conn, peer_pid, rec))

    def settle(self, timeout: float = 10.0) -> list[Received]:
        """Everything received once every connection made so far has been drained and closed.

        Call it after the workload (and every process it started) has exited."""
        with self._lock:
            target = self._iteration  # the idle pass must start after this call
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self._last_idle >= target:
                    assert self.errors == [], self.errors
                    return list(self.received)
            self._stop.wait(0.005)
        raise AssertionError("agent connections still open after the workload exited")

    def records(self, timeout: float = 10.0) -> list[Record]:
        return [r.record for r in self.settle(timeout)]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    a = Agent(tmp_path / "agent.sock")
    yield a
    a.close()
    assert a.errors == []


# ---- workload side ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every tests/shim/*.c compiled once per session."""
    out = tmp_path_factory.mktemp("shim-programs")
    sources = sorted(SOURCES.glob("*.c"))

    def build(src: Path) -> tuple[str, Path]:
        exe = out / src.stem
        gcc("-O1", "-pthread", "-o", str(exe), str(src))
        return src.stem, exe

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return dict(pool.map(build, sources))


@dataclass
class Run:
    pid: int
    returncode: int
    stdout: str
    stderr: str
    elapsed: float


def shim_env(
    socket_path: Path | str | None, workload: str | None = "app=test", **extra: str
) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LD_PRELOAD": str(shim_path())}
    # The inventory of libraries loaded with each program is left out unless a test asks for it
    # (tests/test_shim_libmem.py): these tests count every record a process sends.
    env["TELLTALE_START_LIBRARIES"] = "0"
    if socket_path is not None:
        env["TELLTALE_SOCKET"] = str(socket_path)
    if workload is not None:
        env["TELLTALE_WORKLOAD"] = workload
    env.update(extra)
    return env


def run(
    program: Path,
    *args: str,
    env: Mapping[str, str],
    cwd: Path,
    timeout: float = 30.0,
    check: bool = True,
) -> Run:
    start = time.monotonic()
    with subprocess.Popen(
        [str(program), *args],
        env=dict(env),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise AssertionError(f"{program.name} still running after {timeout} s") from None
    result = Run(proc.pid, proc.returncode, out, err, time.monotonic() - start)
    if check:
        assert result.returncode == 0, result
    return result


def inet(address: str, port: int) -> SockAddr:
    raw = struct.pack("<H", socket.AF_INET) + struct.pack(">H", port) + socket.inet_aton(address) + bytes(8)
    return SockAddr("inet", address, port, raw)


def by_pid(received: list[Received]) -> dict[int, list[Record]]:
    """Records per process, in the order their connections were accepted and sent."""
    out: dict[int, list[Record]] = {}
    for r in sorted(received, key=lambda r: r.conn):
        out.setdefault(r.record.pid, []).append(r.record)
    return out


def header(rec: Record) -> tuple[RecordKind, RecordFlag, int, int, int]:
    return rec.kind, rec.flags, rec.count, rec.seq, rec.dropped


@pytest.fixture
def udp_port() -> Iterator[int]:
    """A loopback UDP port held open by the test (a real address to connect to)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


# The OpenSSL entry points the shim hooks (exported with the OPENSSL_3.0.0 symbol version).
OPENSSL_HOOKS = (
    "EVP_md4",
    "EVP_md5",
    "EVP_sha1",
    "EVP_des_ecb",
    "EVP_des_cbc",
    "EVP_des_ede3_cbc",
    "EVP_rc4",
    "EVP_MD_fetch",
    "EVP_CIPHER_fetch",
    "SSL_CTX_ctrl",
    "SSL_ctrl",
    "TLSv1_method",
    "TLSv1_1_method",
)
