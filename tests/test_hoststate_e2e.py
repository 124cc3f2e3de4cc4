"""Host state end to end: etcd, controller and agent run inside a network namespace the test
creates, so the agent samples that namespace; toggling promiscuous mode and IP forwarding there
raises the matching node alerts, read back through the API with the CLI (run in the namespace,
where the controller's loopback address is)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from telltale.devcluster import LocalCluster, wait_for
from telltale.nodeagent.launch import agent_listening
from telltale.procutil import tied_to_parent

pytestmark = pytest.mark.e2e

PROMISCUOUS = "node.promiscuous_interface"
FORWARDING = "node.ip_forwarding"
API = "127.0.0.1:7443"  # the namespace is the test's own: its loopback is free


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def netns() -> Iterator[str]:
    """A network namespace with loopback up and forwarding off, removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("creating a network namespace needs root")
    if shutil.which("ip") is None:
        pytest.skip("iproute2's ip command is not installed")
    name = f"tt-hs-{uuid.uuid4().hex[:8]}"
    created = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, check=False)
    if created.returncode != 0:
        pytest.skip(f"network namespaces unavailable: {created.stderr.strip()}")
    try:
        ip("-n", name, "link", "set", "lo", "up")
        ip("netns", "exec", name, "sysctl", "-qw", "net.ipv4.ip_forward=0")
        ip("netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=0")
        # An interface that stays down: no IPv6 link-local address appears later to change state.
        ip("-n", name, "link", "add", "tt0", "type", "veth", "peer", "name", "tt1")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


class NamespacedCluster:
    """Controller (with its embedded etcd) and agent started under `ip netns exec`; owns them."""

    def __init__(self, netns: str, workdir: Path) -> None:
        self.netns = netns
        self.workdir = workdir
        self.commands = LocalCluster(workdir)  # only for its command lines
        self.socket_path = workdir / "agent.sock"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        cmd = tied_to_parent(self.commands.telltale_cmd("--log-level", "info", *args))
        with (self.workdir / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, *cmd],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes[name] = process
        return process

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.workdir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`telltale ARGS` inside the namespace, against its controller."""
        env = dict(os.environ, TELLTALE_CONTROLLER=API, TELLTALE_PLAINTEXT="1")
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, *self.commands.telltale_cmd(*args)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def _running(self, name: str) -> None:
        process = self.processes[name]
        if process.poll() is not None:
            pytest.fail(f"{name} exited with {process.returncode}:\n{self.log_tail(name)}")

    def start(self) -> None:
        self.spawn(
            "controller",
            "controller",
            "--plaintext",
            "--listen",
            API,
            "--data-dir",
            str(self.workdir / "controller"),
        )

        def serving() -> bool:
            self._running("controller")
            return self.cli("alerts", "list", "-o", "json", "--timeout", "2").returncode == 0

        wait_for(serving, 90, "the controller in the namespace to serve", interval=0.2)
        self.spawn(
            "agent",
            "agent",
            "--plaintext",
            "--controller",
            API,
            "--socket",
            str(self.socket_path),
            "--state-dir",
            str(self.workdir / "agent"),
        )

        def listening() -> bool:
            self._running("agent")
            return agent_listening(self.socket_path)

        wait_for(listening, 30, "the agent in the namespace to listen")

    def alerts(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Host-state alerts of the two types, by (type, subject)."""
        run = self.cli("alerts", "list", "-o", "json", "--type", PROMISCUOUS, "--type", FORWARDING)
        assert run.returncode == 0, run.stderr
        found = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
        return {(a["alert_type"], a["subject"]): a for a in found}

    def stop(self) -> None:
        for name in ("agent", "controller"):
            process = self.processes.pop(name, None)
            if process is None:
                continue
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()


@pytest.fixture
def cluster(netns: str, tmp_path: Path) -> Iterator[NamespacedCluster]:
    local = NamespacedCluster(netns, tmp_path)
    try:
        local.start()
        yield local
    finally:
        local.stop()


def occurrences(alert: dict[str, Any]) -> int:
    return int(alert.get("occurrences", 0))  # uint64 is a string in JSON


def test_promiscuous_mode_and_ip_forwarding_in_the_agents_namespace_raise_node_alerts(
    netns: str, cluster: NamespacedCluster
) -> None:
    """Each toggle reaches the controller as one changed snapshot and raises its node alert; an
    unchanged state is not reported again."""
    promiscuous_key = (PROMISCUOUS, "tt0")
    forwarding_key = (FORWARDING, "net.ipv4.ip_forward")
    latest: dict[tuple[str, str], dict[str, Any]] = {}

    def seen(
        condition: Callable[[dict[tuple[str, str], dict[str, Any]]], bool], what: str
    ) -> dict[tuple[str, str], dict[str, Any]]:
        def check() -> bool:
            nonlocal latest
            latest = cluster.alerts()
            return bool(condition(latest))

        try:
            wait_for(check, 60, what, interval=0.2)
        except TimeoutError:
            pytest.fail(f"{what}: alerts are {latest}\nagent log:\n{cluster.log_tail('agent')}")
        return latest

    ip("-n", netns, "link", "set", "dev", "tt0", "promisc", "on")
    alerts = seen(lambda a: promiscuous_key in a, "the promiscuous interface alert")
    assert forwarding_key not in alerts
    assert occurrences(alerts[promiscuous_key]) == 1

    ip("netns", "exec", netns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    alerts = seen(
        lambda a: forwarding_key in a and occurrences(a[promiscuous_key]) >= 2, "the IP forwarding alert"
    )
    # One snapshot with promiscuous mode alone, one with forwarding too: nothing else was sent.
    assert occurrences(alerts[forwarding_key]) == 1
    assert occurrences(alerts[promiscuous_key]) == 2
    assert set(alerts) == {promiscuous_key, forwarding_key}
