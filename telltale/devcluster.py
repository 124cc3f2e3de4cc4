"""A local single-node deployment for the demo and the tests: a controller (with its embedded
etcd, or a given etcd) and an agent, as child processes on free loopback ports.

With ``netns``, every process (daemons, CLI calls, workloads) runs inside that network namespace,
on its loopback: the agent then observes, and enforces in, that namespace only. Without it the
agent never touches the host's firewall (``--enforcement off``).

It owns the processes it starts: `stop()` (or leaving the `with` block) ends them all, and a
process that fails to become ready is reported with the tail of its log.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from telltale.netutil import free_tcp_port
from telltale.procutil import terminate, tied_to_parent


class ClusterError(RuntimeError):
    """A process of the local cluster did not start; the message carries its log tail."""


def wait_for(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll `condition` until it is true; raise TimeoutError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


# Asks for the agent service by name: etcd serves the health service too, for the empty name, and a
# stray etcd on the port must not pass for a controller.
HEALTH_REQUEST = health_pb2.HealthCheckRequest(service="telltale.v1.AgentService")
_HEALTH_CHECK = """
import sys, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
with grpc.insecure_channel(sys.argv[1]) as channel:
    request = health_pb2.HealthCheckRequest(service="telltale.v1.AgentService")
    answer = health_pb2_grpc.HealthStub(channel).Check(request, timeout=1)
sys.exit(0 if answer.status == health_pb2.HealthCheckResponse.SERVING else 1)
"""


def _healthy_in(netns: str, address: str) -> bool:
    """The health check, run by a process inside network namespace `netns`."""
    check = ["ip", "netns", "exec", netns, sys.executable, "-c", _HEALTH_CHECK, address]
    try:
        return subprocess.run(check, capture_output=True, timeout=10, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _healthy(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(HEALTH_REQUEST, timeout=1)
        except grpc.RpcError:
            return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


class LocalCluster:
    """Controller + agent under `workdir`; use as a context manager.

    Start it from a long-lived thread (the main one): its processes are tied to that thread
    and are sent SIGTERM if it dies without stopping them.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        etcd_endpoint: str = "",
        etcd_prefix: str = "/telltale/v1/",
        log_level: str = "info",
        controller_args: Sequence[str] = (),
        agent_args: Sequence[str] = (),
        netns: str = "",
    ) -> None:
        self.workdir = workdir
        self.etcd_endpoint = etcd_endpoint
        self.etcd_prefix = etcd_prefix
        self.log_level = log_level
        self.controller_args = list(controller_args)
        self.agent_args = list(agent_args)
        self.netns = netns
        self.api = f"127.0.0.1:{free_tcp_port()}"
        self.socket_path = workdir / "agent.sock"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    # -- processes -------------------------------------------------------------------------
    def telltale_cmd(self, *args: str) -> list[str]:
        """The command line that runs `telltale ARGS` with this interpreter (in the namespace, if any)."""
        inside = ["ip", "netns", "exec", self.netns] if self.netns else []
        return [*inside, sys.executable, "-m", "telltale.cli.main", *args]

    def _spawn(self, name: str, args: Sequence[str]) -> subprocess.Popen[bytes]:
        log_path = self.workdir / f"{name}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                tied_to_parent(self.telltale_cmd("--log-level", self.log_level, *args)),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes[name] = process
        return process

    def log_tail(self, name: str, lines: int = 20) -> str:
        """The last lines of a process's log."""
        try:
            return "\n".join((self.workdir / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _ready(self, name: str, condition: Callable[[], bool], timeout: float) -> None:
        process = self.processes[name]

        def check() -> bool:
            if process.poll() is not None:
                raise ClusterError(f"{name} exited with {process.returncode}:\n{self.log_tail(name)}")
            return condition()

        try:
            wait_for(check, timeout, f"{name} to be ready")
        except TimeoutError as exc:
            raise ClusterError(f"{exc}:\n{self.log_tail(name)}") from None

    def start_controller(self, timeout: float = 60.0) -> None:
        """Start the controller and wait until its health check says SERVING."""
        args = [
            "controller",
            "--plaintext",
            "--listen",
            self.api,
            "--data-dir",
            str(self.workdir / "controller"),
            "--etcd-prefix",
            self.etcd_prefix,
        ]
        if self.etcd_endpoint:
            args += ["--etcd-endpoints", self.etcd_endpoint]
        self._spawn("controller", [*args, *self.controller_args])
        if self.netns:
            self._ready("controller", lambda: _healthy_in(self.netns, self.api), timeout)
        else:
            self._ready("controller", lambda: _healthy(self.api), timeout)

    def start_agent(self, timeout: float = 30.0) -> None:
        """Start the agent and wait until its shim socket accepts connections."""
        from telltale.nodeagent.launch import agent_listening

        self._spawn(
            "agent",
            [
                "agent",
                "--plaintext",
                "--controller",
                self.api,
                "--socket",
                str(self.socket_path),
                "--state-dir",
                str(self.workdir / "agent"),
                *([] if self.netns else ["--enforcement", "off"]),
                *self.agent_args,
            ],
        )
        self._ready("agent", lambda: agent_listening(self.socket_path), timeout)

    def stop(self, name: str | None = None, timeout: float = 15.0) -> None:
        """Stop one process (or all, agent first): SIGTERM, then SIGKILL after `timeout`."""
        names = [name] if name else [n for n in ("agent", "controller") if n in self.processes]
        for n in names:
            process = self.processes.pop(n, None)
            if process is not None:
                terminate(process, timeout)

    def kill(self, name: str) -> None:
        """Kill one process as `kill -9` would (SIGKILL to its process group: no cleanup, no
        goodbye) and wait until it is gone. Raises KeyError when it is not running here."""
        process = self.processes.pop(name)
        if process.poll() is None:  # not reaped yet, so its process group exists even if it exited
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    # -- clients ---------------------------------------------------------------------------
    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run `telltale ARGS` against this cluster's API and capture its output."""
        env = dict(os.environ, TELLTALE_CONTROLLER=self.api, TELLTALE_PLAINTEXT="1")
        return subprocess.run(
            self.telltale_cmd(*args), env=env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def run_workload(
        self, app: str, command: Sequence[str], *extra: str, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run `command` as a workload of `app` under the shim and wait for it."""
        return subprocess.run(
            self.telltale_cmd("run", "--app", app, "--socket", str(self.socket_path), *extra, "--", *command),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def __enter__(self) -> LocalCluster:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self.start_controller()
            self.start_agent()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
