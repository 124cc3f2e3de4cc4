"""Real TLS for the security tests: a PKI in a directory, controllers serving TLS as real processes,
and gRPC channels presenting tokens and certificates (importable as `tlskit`)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from telltale import pki
from telltale.devcluster import wait_for
from telltale.netutil import free_tcp_port
from telltale.procutil import terminate, tied_to_parent


@dataclass(frozen=True)
class Pki:
    """A CA with a controller certificate (127.0.0.1, localhost) in `dir`."""

    dir: Path

    @classmethod
    def create(cls, directory: Path) -> Pki:
        pki.init_ca(directory)
        pki.issue(directory, "controller", "ctl", ips=["127.0.0.1"], dns=["localhost"])
        return cls(directory)

    @property
    def ca(self) -> Path:
        return self.dir / pki.CA_CERT

    def files(self, kind: pki.Kind, name: str) -> pki.Written:
        """The certificate and key of `kind` `name`, issued on first use."""
        paths = pki.cert_paths(self.dir, kind, name)
        if not paths.cert.exists():
            pki.issue(self.dir, kind, name)
        return paths


def telltale_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "telltale.cli.main", *args]


class TlsController:
    """`telltale controller` with TLS on free loopback ports; a context manager that always stops it.

    `api` takes API tokens over server TLS; `agents` is the mutual-TLS agent port. The first admin
    token is bootstrapped into `workdir/admin.token`.
    """

    def __init__(
        self,
        workdir: Path,
        tls: Pki,
        *,
        etcd_endpoint: str = "",
        name: str = "controller",
        log_level: str = "debug",
    ) -> None:
        self.workdir = workdir
        self.tls = tls
        self.etcd_endpoint = etcd_endpoint
        self.name = name
        self.log_level = log_level
        self.api = f"127.0.0.1:{free_tcp_port()}"
        self.agents = f"127.0.0.1:{free_tcp_port()}"
        self.bootstrap_file = workdir / "admin.token"
        self.log_path = workdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def args(self) -> list[str]:
        ctl = self.tls.files("controller", "ctl")
        args = [
            "--log-level",
            self.log_level,
            "controller",
            "--listen",
            self.api,
            "--agent-listen",
            self.agents,
            "--data-dir",
            str(self.workdir / f"{self.name}-data"),
            "--tls-cert",
            str(ctl.cert),
            "--tls-key",
            str(ctl.key),
            "--tls-ca",
            str(self.tls.ca),
            "--bootstrap-token-file",
            str(self.bootstrap_file),
        ]
        if self.etcd_endpoint:
            args += ["--etcd-endpoints", self.etcd_endpoint]
        return args

    def start(self, timeout: float = 60.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                tied_to_parent(telltale_cmd(*self.args())),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = self.process

        def serving() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"the controller exited with {process.returncode}:\n{self.log()}")
            return self._healthy()

        wait_for(serving, timeout, "the TLS controller to serve")

    def _healthy(self) -> bool:
        with self.channel() as channel:
            try:
                answer = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service="telltale.v1.AgentService"), timeout=1
                )
            except grpc.RpcError:
                return False
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def admin_token(self) -> str:
        return self.bootstrap_file.read_text().strip()

    def channel(
        self, *, token: str | None = None, cert: pki.Written | None = None, address: str = ""
    ) -> grpc.Channel:
        """A TLS channel to the API port (or `address`), with a bearer token and/or a client cert."""
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.tls.ca.read_bytes(),
            private_key=cert.key.read_bytes() if cert else None,
            certificate_chain=cert.cert.read_bytes() if cert else None,
        )
        if token is not None:
            credentials = grpc.composite_channel_credentials(
                credentials, grpc.access_token_call_credentials(token)
            )
        return grpc.secure_channel(address or self.api, credentials)

    def stop(self, timeout: float = 15.0) -> None:
        process, self.process = self.process, None
        if process is not None:
            terminate(process, timeout)

    def __enter__(self) -> TlsController:
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


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """`telltale ARGS` as a process, output captured."""
    return subprocess.run(
        telltale_cmd(*args),
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def agent_args(controller: TlsController, state: Path, cert: pki.Written | None) -> Sequence[str]:
    """`telltale agent` flags for a TLS agent of `controller` (no certificate: CA only)."""
    args = [
        "agent",
        "--controller",
        controller.agents,
        "--socket",
        str(state / "agent.sock"),
        "--state-dir",
        str(state),
        "--enforcement",
        "off",
        "--no-host-state",
        "--tls-ca",
        str(controller.tls.ca),
    ]
    if cert is not None:
        args += ["--tls-cert", str(cert.cert), "--tls-key", str(cert.key)]
    return args
