"""Host state observation: change detection and debouncing against the in-memory source (virtual
time), the real source against a fake /proc, and the real kernel inside a network namespace the
test creates (sampled by `python -m telltale.nodeagent.hoststate` run under `ip netns exec`)."""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import os
import platform
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import ClassVar

import pytest
import trio
import trio.testing
from google.protobuf import json_format
from helpers import eventually
from netns import in_netns, ip, network_namespace, sysctl

from telltale.engine.catalog_node import SPECS
from telltale.engine.params import SYSCTL_EXPECTATION
from telltale.nodeagent import hostkernel
from telltale.nodeagent.hostkernel import SYSCTLS, KernelHostState
from telltale.nodeagent.hoststate import (
    DEBOUNCE_S,
    MAX_DEBOUNCE_S,
    MemoryHostState,
    run_host_state,
    same_state,
)
from telltale.procutil import tied_to_parent
from telltale.v1 import agent_pb2

POLL_S = 10.0


def state(*, promiscuous: bool = False, forwarding: str = "0") -> agent_pb2.NodeState:
    return agent_pb2.NodeState(
        interfaces=[agent_pb2.InterfaceState(name="eth0", up=True, promiscuous=promiscuous)],
        sysctls={"net.ipv4.ip_forward": forwarding},
    )


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


class Published(list[agent_pb2.NodeState]):
    """What run_host_state published, in order."""

    def __call__(self, message: agent_pb2.NodeState) -> None:
        self.append(message)


# -- run_host_state against the in-memory source ---------------------------------------------------


@contextlib.asynccontextmanager
async def running(
    source: MemoryHostState, *, poll_interval: float = POLL_S, debounce: float = DEBOUNCE_S
) -> AsyncIterator[Published]:
    """run_host_state on `source`, started (its first snapshot taken) on entry and cancelled when
    the block ends; yields the list it publishes to."""
    published = Published()
    run = functools.partial(run_host_state, poll_interval=poll_interval, debounce=debounce)
    async with trio.open_nursery() as nursery:
        await nursery.start(run, source, published)
        yield published
        nursery.cancel_scope.cancel()


@trio.testing.trio_test
async def test_the_first_snapshot_is_published_by_the_time_the_task_has_started() -> None:
    """The snapshot at start is full and published before nursery.start returns."""
    source = MemoryHostState(state())
    async with running(source) as published:
        assert len(published) == 1
        assert published[0].full
        assert published[0].interfaces[0].name == "eth0"
    assert source.closed


@trio.testing.trio_test
async def test_a_change_is_published_once_and_an_unchanged_resample_is_not(
    clock: trio.testing.MockClock,
) -> None:
    """A notified change is published; notifications and polls that change nothing publish nothing."""
    source = MemoryHostState(state())
    async with running(source) as published:
        source.set(state(promiscuous=True))
        await trio.sleep(MAX_DEBOUNCE_S + 0.1)
        assert [p.interfaces[0].promiscuous for p in published] == [False, True]
        taken = source.snapshots
        source.notify()  # a notification about nothing we report
        await trio.sleep(5 * POLL_S)  # and several polls
        assert source.snapshots > taken + 1
        assert len(published) == 2


@trio.testing.trio_test
async def test_a_burst_of_notifications_is_sampled_once_after_it_settles(
    clock: trio.testing.MockClock,
) -> None:
    """Ten notifications 10 ms apart lead to one re-sample, debounce seconds after the last."""
    source = MemoryHostState(state())
    async with running(source, debounce=0.15) as published:
        for _ in range(10):
            source.set(state(forwarding="1"))
            await trio.sleep(0.01)
        assert source.snapshots == 1
        await trio.sleep(0.15)
        assert source.snapshots == 2
        assert [p.sysctls["net.ipv4.ip_forward"] for p in published] == ["0", "1"]


@trio.testing.trio_test
async def test_a_continuous_stream_of_notifications_does_not_starve_sampling(
    clock: trio.testing.MockClock,
) -> None:
    """Notifications every 50 ms for 5 s still let a re-sample through at least every MAX_DEBOUNCE_S."""
    source = MemoryHostState(state())
    async with running(source, debounce=0.15):
        end = trio.current_time() + 5
        flip = False
        while trio.current_time() < end:
            flip = not flip
            source.set(state(promiscuous=flip))
            await trio.sleep(0.05)
        assert source.snapshots >= 1 + int(5 / MAX_DEBOUNCE_S) - 1


@trio.testing.trio_test
async def test_a_change_without_notification_is_found_by_the_next_poll(clock: trio.testing.MockClock) -> None:
    """Settings and listeners have no notification: the poll finds them, not sooner."""
    source = MemoryHostState(state())
    async with running(source, poll_interval=POLL_S) as published:
        start = trio.current_time()
        source.set(state(forwarding="1"), notify=False)
        await eventually(lambda: len(published) == 2, "the polled change", within=2 * POLL_S)
        assert POLL_S <= trio.current_time() - start <= POLL_S + 0.2


class FlakySource(MemoryHostState):
    """Fails the snapshots listed in `failing` (1-based)."""

    def __init__(self, initial: agent_pb2.NodeState, failing: set[int]) -> None:
        super().__init__(initial)
        self.failing = failing

    async def snapshot(self) -> agent_pb2.NodeState:
        taken = await super().snapshot()
        if self.snapshots in self.failing:
            raise RuntimeError("broken source")
        return taken


@trio.testing.trio_test
async def test_a_failing_source_is_logged_and_sampling_goes_on(
    clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A snapshot that raises (even the first) ends nothing: the next poll publishes."""
    source = FlakySource(state(), failing={1, 3})
    async with running(source, poll_interval=POLL_S) as published:
        assert published == []
        await trio.sleep(POLL_S + 0.1)
        assert len(published) == 1
        source.set(state(promiscuous=True))
        await trio.sleep(POLL_S + MAX_DEBOUNCE_S + 0.1)  # snapshot 3 fails, the poll after it works
        assert [p.interfaces[0].promiscuous for p in published] == [False, True]
    assert caplog.text.count("sampling failed") == 2


def test_snapshots_that_differ_only_in_time_are_the_same() -> None:
    """same_state ignores the sampling time and nothing else."""
    a, b = state(), state()
    a.time.FromSeconds(1)
    b.time.FromSeconds(2)
    assert same_state(a, b)
    b.interfaces[0].addresses.append("10.0.0.1/8")
    assert not same_state(a, b)


# -- the real source, without a namespace ----------------------------------------------------------


def test_every_setting_the_node_checks_read_by_default_is_reported() -> None:
    """SYSCTLS covers the catalog's defaults and the settings the checks read by name."""
    needed = {"kernel.randomize_va_space", "kernel.yama.ptrace_scope"}
    for spec in SPECS:
        for param in spec.params:
            if param.name == "sysctls":
                needed |= set(param.default)  # type: ignore[arg-type]
            if param.name == "expected":
                for text in param.default:  # type: ignore[union-attr]
                    parsed = SYSCTL_EXPECTATION.fullmatch(str(text))
                    assert parsed is not None
                    needed.add(parsed[1])
    assert needed <= set(SYSCTLS)


def test_the_host_snapshot_carries_the_kernel_loopback_and_settings() -> None:
    """A read-only sample of the test's own namespace."""
    source = KernelHostState()
    try:
        snapshot = source.sample()
    finally:
        source.close()
    assert snapshot.full
    assert snapshot.kernel == platform.release()
    assert "lo" in [i.name for i in snapshot.interfaces]
    assert snapshot.sysctls["net.ipv4.ip_forward"] in {"0", "1"}
    assert (
        snapshot.sysctls["kernel.randomize_va_space"]
        == Path("/proc/sys/kernel/randomize_va_space").read_text().strip()
    )


def test_unreadable_settings_are_left_out_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A missing setting is skipped silently; an unreadable one is skipped and logged once."""
    sysctl = tmp_path / "sys" / "kernel"
    sysctl.mkdir(parents=True)
    (sysctl / "kptr_restrict").write_text("1\n")
    (sysctl / "core_pattern").mkdir()  # reading a directory fails with EISDIR
    source = KernelHostState(
        sysctls=["kernel.kptr_restrict", "kernel.core_pattern", "kernel.absent"], proc=tmp_path
    )
    with caplog.at_level(logging.WARNING):
        first, second = source.sample(), source.sample()
    source.close()
    assert dict(first.sysctls) == dict(second.sysctls) == {"kernel.kptr_restrict": "1"}
    assert caplog.text.count("kernel.core_pattern") == 1
    assert "kernel.absent" not in caplog.text


def test_socket_owners_are_found_by_inode_in_a_bounded_scan(tmp_path: Path) -> None:
    """The lowest pid holding the socket is its owner; the scan stops at its descriptor budget."""
    for pid, fds in {
        "7": {"3": "socket:[111]", "4": "/dev/null"},
        "9": {"0": "socket:[111]", "5": "socket:[222]"},
    }.items():
        (tmp_path / pid / "fd").mkdir(parents=True)
        (tmp_path / pid / "exe").symlink_to(f"/usr/bin/prog{pid}")
        for fd, target in fds.items():
            (tmp_path / pid / "fd" / fd).symlink_to(target)
    (tmp_path / "self").mkdir()  # not a pid
    found = hostkernel._scan_owners(tmp_path, {111, 222, 333}, max_fds=100)
    assert found == {111: (7, "/usr/bin/prog7"), 222: (9, "/usr/bin/prog9")}
    assert hostkernel._scan_owners(tmp_path, {222}, max_fds=2) == {}


class FakeIPRoute:
    """Stands in for pyroute2.IPRoute: canned dumps, as pyroute2 decodes them (mappings)."""

    links: ClassVar[list[dict[str, object]]] = []
    addresses: ClassVar[list[dict[str, object]]] = []
    routes: ClassVar[list[dict[str, object]]] = []

    def __enter__(self) -> FakeIPRoute:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def get_links(self) -> list[dict[str, object]]:
        return self.links

    def get_addr(self) -> list[dict[str, object]]:
        return self.addresses

    def get_default_routes(self, table: int) -> list[dict[str, object]]:
        return self.routes


def test_over_the_bound_promiscuous_interfaces_are_kept_and_routes_are_named(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """300 interfaces: 256 reported, the promiscuous one among them; p2p local addresses, multipath
    gateways and device-only default routes are read as such."""
    count = hostkernel.MAX_INTERFACES + 44
    FakeIPRoute.links = [{"index": n, "ifname": f"if{n:03}", "flags": 0} for n in range(1, count + 1)]
    FakeIPRoute.links[-1]["promiscuity"] = 1  # a packet socket made it promiscuous
    FakeIPRoute.links[0]["flags"] = 0x1 | 0x100  # up, promiscuous by "ip link set promisc on"
    FakeIPRoute.addresses = [{"index": 1, "local": "10.0.0.1", "address": "10.0.0.2", "prefixlen": 32}]
    FakeIPRoute.routes = [
        {"oif": 1, "multipath": [{"gateway": "192.0.2.1"}, {"gateway": "192.0.2.2"}]},
        {"oif": 2},
        {"via": {"family": 10, "addr": "fe80::1"}, "oif": 1},
    ]
    monkeypatch.setattr(hostkernel, "IPRoute", FakeIPRoute)
    source = KernelHostState(sysctls=())
    with caplog.at_level(logging.WARNING):
        first, second = source.sample(), source.sample()
    source.close()
    names = [i.name for i in first.interfaces]
    assert len(names) == hostkernel.MAX_INTERFACES
    assert names == sorted(names)
    assert {"if001", f"if{count}"} <= set(names)
    promiscuous = [i.name for i in first.interfaces if i.promiscuous]
    assert promiscuous == ["if001", f"if{count}"]
    assert list(first.interfaces[0].addresses) == ["10.0.0.1/32"]
    assert list(first.default_routes) == ["192.0.2.1", "192.0.2.2", "dev if002", "fe80::1"]
    assert same_state(first, second)
    assert caplog.text.count(f"{count} interfaces, only {hostkernel.MAX_INTERFACES} reported") == 1


# -- the real kernel, inside a network namespace -----------------------------------------------------


@pytest.fixture
def netns() -> Iterator[str]:
    """A network namespace of its own (loopback up, IPv4 forwarding off), removed afterwards."""
    with network_namespace("tt-hs") as name:
        sysctl(name, "net.ipv4.ip_forward=0")
        yield name


class Sampler:
    """`python -m telltale.nodeagent.hoststate` inside a namespace; its snapshots, as published."""

    def __init__(self, netns: str, poll_interval: float) -> None:
        cmd = [sys.executable, "-m", "telltale.nodeagent.hoststate", str(poll_interval)]
        # A file, not a pipe: a pipe nobody reads could fill and block the sampler. Closed in stop().
        self._errors = tempfile.TemporaryFile("w+")  # noqa: SIM115
        self.process = subprocess.Popen(
            in_netns(netns, *tied_to_parent(cmd)),
            stdout=subprocess.PIPE,
            stderr=self._errors,
            text=True,
        )
        self.published: list[agent_pb2.NodeState] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def wait(
        self, what: str, condition: Callable[[agent_pb2.NodeState], bool], within: float = 10.0
    ) -> agent_pb2.NodeState:
        """The first snapshot published from now on (or already the latest) that meets `condition`."""
        if self.published and condition(self.published[-1]):
            return self.published[-1]
        deadline = time.monotonic() + within
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                self.process.wait(timeout=10)
                self._errors.seek(0)
                pytest.fail(f"sampler exited with {self.process.returncode}: {self._errors.read()}")
            snapshot = json_format.Parse(line, agent_pb2.NodeState())
            self.published.append(snapshot)
            if condition(snapshot):
                return snapshot
        last = json_format.MessageToDict(self.published[-1]) if self.published else None
        pytest.fail(f"no snapshot showed {what} within {within}s; last: {json.dumps(last)}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._errors.close()


@pytest.fixture
def sampler_factory(netns: str) -> Iterator[Callable[[float], Sampler]]:
    started: list[Sampler] = []

    def start(poll_interval: float) -> Sampler:
        sampler = Sampler(netns, poll_interval)
        started.append(sampler)
        sampler.wait("a first snapshot", lambda s: s.full)
        return sampler

    yield start
    for sampler in started:
        sampler.stop()


def interface(snapshot: agent_pb2.NodeState, name: str) -> agent_pb2.InterfaceState | None:
    return next((i for i in snapshot.interfaces if i.name == name), None)


def test_interface_changes_in_a_namespace_are_published_as_they_happen(
    netns: str, sampler_factory: Callable[[float], Sampler]
) -> None:
    """Appearing, up, promiscuous on and off, an address, a default route, disappearing: each is
    seen through notifications alone (the poll is an hour away), and nothing is published twice."""
    sampler = sampler_factory(3600.0)
    first = sampler.published[0]
    assert [i.name for i in first.interfaces] == ["lo"]
    assert first.sysctls["net.ipv4.ip_forward"] == "0"

    ip("-n", netns, "link", "add", "tt0", "type", "veth", "peer", "name", "tt1")
    sampler.wait("tt0 appearing", lambda s: interface(s, "tt0") is not None)
    ip("-n", netns, "link", "set", "tt0", "up")
    sampler.wait("tt0 up", lambda s: getattr(interface(s, "tt0"), "up", False))
    ip("-n", netns, "link", "set", "dev", "tt0", "promisc", "on")
    sampler.wait("tt0 promiscuous", lambda s: getattr(interface(s, "tt0"), "promiscuous", False))
    ip("-n", netns, "link", "set", "dev", "tt0", "promisc", "off")
    sampler.wait("tt0 no longer promiscuous", lambda s: not getattr(interface(s, "tt0"), "promiscuous", True))
    ip("-n", netns, "addr", "add", "10.77.0.2/24", "dev", "tt0")
    sampler.wait("tt0's address", lambda s: "10.77.0.2/24" in getattr(interface(s, "tt0"), "addresses", ()))
    ip("-n", netns, "route", "add", "default", "via", "10.77.0.1")
    sampler.wait("the default route", lambda s: list(s.default_routes) == ["10.77.0.1"])
    ip("-n", netns, "link", "del", "tt0")
    gone = sampler.wait("tt0 and tt1 gone", lambda s: [i.name for i in s.interfaces] == ["lo"])
    assert list(gone.default_routes) == []

    published = sampler.published
    for before, after in itertools.pairwise(published):
        assert not same_state(before, after), "an identical snapshot was published twice"


def test_ip_forwarding_toggles_in_a_namespace_are_published_through_notifications(
    netns: str, sampler_factory: Callable[[float], Sampler]
) -> None:
    """net.ipv4.ip_forward and net.ipv6.conf.all.forwarding announce themselves (netconf groups)."""
    sampler = sampler_factory(3600.0)
    sysctl(netns, "net.ipv4.ip_forward=1")
    sampler.wait("IPv4 forwarding on", lambda s: s.sysctls["net.ipv4.ip_forward"] == "1")
    sysctl(netns, "net.ipv6.conf.all.forwarding=1")
    sampler.wait("IPv6 forwarding on", lambda s: s.sysctls["net.ipv6.conf.all.forwarding"] == "1")
    sysctl(netns, "net.ipv4.ip_forward=0")
    sampler.wait("IPv4 forwarding off", lambda s: s.sysctls["net.ipv4.ip_forward"] == "0")


LISTENER = """
import socket, sys
tcp = socket.socket(); tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind(("0.0.0.0", int(sys.argv[1]))); tcp.listen()
udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); udp.bind(("::1", int(sys.argv[1])))
print("listening", flush=True)
sys.stdin.read()
"""


def test_listening_sockets_in_a_namespace_are_polled_with_their_owner(
    netns: str, sampler_factory: Callable[[float], Sampler]
) -> None:
    """A TCP listener and a bound UDP socket appear with pid and executable, and go when closed."""
    sampler = sampler_factory(0.2)
    assert list(sampler.published[0].listening) == []
    port = 4711
    listener = subprocess.Popen(
        in_netns(netns, sys.executable, "-c", LISTENER, str(port)),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert listener.stdout is not None
        assert listener.stdin is not None
        assert listener.stdout.readline() == "listening\n"
        seen = sampler.wait("both sockets", lambda s: len(s.listening) == 2)
        tcp, udp = sorted(seen.listening, key=lambda s: s.protocol)
        assert (tcp.protocol, tcp.address.family, tcp.address.address, tcp.address.port) == (
            "tcp",
            "inet",
            "0.0.0.0",
            port,
        )
        assert (udp.protocol, udp.address.family, udp.address.address, udp.address.port) == (
            "udp",
            "inet6",
            "::1",
            port,
        )
        assert tcp.pid == udp.pid == listener.pid
        assert tcp.exe == os.path.realpath(sys.executable)
        listener.stdin.close()
        listener.wait(timeout=10)
        sampler.wait("the sockets closed", lambda s: len(s.listening) == 0)
    finally:
        listener.kill()
        listener.wait()
        if listener.stdout is not None:
            listener.stdout.close()
