"""Network enforcement: the pure planning (validation, own-address exclusion, bounds), the in-memory
twin, and the real nftables table inside a network namespace each test creates and removes.

Kernel tests run the firewall in a child process under `ip netns exec` (a libnftables context stays
bound to the namespace it was created in), so every operation is also a fresh "agent" finding the
table a previous one left. The host's own namespace is only ever read (`nft list tables`), to prove
it was not changed.
"""

from __future__ import annotations

import ipaddress
import json
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from netns import host_tables_unchanged, in_netns, inside, ip, network_namespace, require_libnftables, sysctl

from telltale.nodeagent import enforce
from telltale.nodeagent.enforce import (
    EnforcementError,
    MemoryFirewall,
    exclude,
    has_net_admin,
    open_firewall,
    parse_networks,
    plan,
    remove_enforcement,
)

BLOCKED = "127.0.0.66"  # local inside the namespace through lo's 127.0.0.0/8 route, yet not an address
BLOCKED6 = "fd66::66"  # local through a `local fd66::/64` route the fixture adds
OWN = "10.66.0.1"  # an address the fixture puts on the namespace's lo
FAST_MS = 500.0  # a rejected connect takes ~0.1 ms; a dropped one would hang for minutes
CALL_TIMEOUT_S = 120.0

# Runs inside the namespace: `python -c HELPER <op>`, the argument as one JSON line on stdin; prints
# one JSON line per answer. "probe" then runs until stdin closes.
HELPER = r"""
import errno, json, select, socket, sys, time
from telltale.nodeagent import enforce

def listener(host):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server = socket.socket(family)
    server.setsockopt(socket.SOL_IP, 15, 1)  # IP_FREEBIND: fd66::66 is routed locally, not configured
    server.bind((host, 0))
    server.listen(1024)
    server.setblocking(False)
    return server

def connect(server, host):
    client = socket.socket(server.family)
    client.settimeout(5)
    started = time.perf_counter()
    try:
        client.connect((host, server.getsockname()[1]))
        error = None
    except OSError as exc:
        error = errno.errorcode.get(exc.errno, str(exc))
    finally:
        client.close()
    try:
        server.accept()[0].close()
    except BlockingIOError:
        pass
    return error, (time.perf_counter() - started) * 1000

def firewall():
    found, reason = enforce.open_firewall()
    if found is None:
        sys.exit(reason)
    return found

def out(value):
    print(json.dumps(value), flush=True)

op, arg = sys.argv[1], json.loads(sys.stdin.readline())
if op == "apply":
    result = firewall().apply(arg)
    out({"networks": result.networks, "excluded": result.excluded, "invalid": result.invalid})
elif op == "current":
    out(firewall().current())
elif op == "remove":
    out(firewall().remove())
elif op == "remove_enforcement":
    out(enforce.remove_enforcement())
elif op == "connect":
    server = listener(arg)
    error, ms = connect(server, arg)
    out({"error": error, "ms": ms})
elif op == "replace":  # arg: list of network lists, applied in turn; the time of each apply
    fw = firewall()
    times = []
    for networks in arg:
        started = time.perf_counter()
        fw.apply(networks)
        times.append(time.perf_counter() - started)
    out(times)
elif op == "serve":  # accept connections until stdin closes
    server = listener(arg)
    out(server.getsockname()[1])
    while sys.stdin not in select.select([sys.stdin, server], [], [])[0]:
        try:
            server.accept()[0].close()
        except BlockingIOError:
            pass
elif op == "dial":  # arg: [host, port]
    client = socket.socket(socket.AF_INET6 if ":" in arg[0] else socket.AF_INET)
    client.settimeout(5)
    started = time.perf_counter()
    try:
        client.connect(tuple(arg))
        error = None
    except OSError as exc:
        error = errno.errorcode.get(exc.errno, str(exc))
    out({"error": error, "ms": (time.perf_counter() - started) * 1000})
elif op == "probe":  # connect again and again until stdin closes
    server = listener(arg)
    out("ready")
    outcomes = {}
    while not select.select([sys.stdin], [], [], 0)[0]:
        error, _ = connect(server, arg)
        outcomes[error or "connected"] = outcomes.get(error or "connected", 0) + 1
    out(outcomes)
"""


# -- pure planning -----------------------------------------------------------------------------------


def test_exclude_splits_a_range_around_an_own_address() -> None:
    """An own address is carved out of a range; the rest of the range stays blocked."""
    assert exclude(["10.0.0.0/30"], ["10.0.0.1"]) == ["10.0.0.0/32", "10.0.0.2/31"]


def test_exclude_removes_the_host_loopback_address_but_not_the_loopback_range() -> None:
    """Only 127.0.0.1 and ::1 themselves are spared: other loopback-range addresses stay blockable."""
    result = exclude(["127.0.0.0/8", "::1"], ["127.0.0.1", "::1"])
    networks = [ipaddress.ip_network(n) for n in result]
    assert not any(ipaddress.ip_address("127.0.0.1") in n for n in networks)
    assert any(ipaddress.ip_address(BLOCKED) in n for n in networks)
    assert all(n.version == 4 for n in networks)


def test_exclude_collapses_overlaps_and_lists_ipv4_before_ipv6() -> None:
    """Overlapping and duplicate networks collapse; IPv4 comes first, each family in address order."""
    given_networks = [
        "2001:db8:1::/48",
        "10.1.0.0/16",
        "2001:db8::/32",
        "10.0.0.0/8",
        "10.0.0.5",
        "192.0.2.7",
    ]
    assert exclude(given_networks, []) == ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]


def test_exclude_ignores_unusable_own_addresses_and_scopes() -> None:
    """Own addresses outside every network, or unparsable, change nothing; a %scope is ignored."""
    assert exclude(["10.0.0.0/8"], ["192.168.1.1", "garbage", "fe80::1%eth0"]) == ["10.0.0.0/8"]
    assert "fe80::1/128" not in exclude(["fe80::/127"], ["fe80::1%eth0"])
    assert exclude(["fe80::/127"], ["fe80::1%eth0"]) == ["fe80::/128"]


def test_exclude_refuses_an_invalid_network() -> None:
    """exclude() takes networks only; validation with reporting is plan()'s job."""
    with pytest.raises(ValueError, match=r"example\.com"):
        exclude(["example.com"], [])


_v4 = st.builds(
    lambda a, p: ipaddress.ip_network((a, p), strict=False),
    st.integers(0, 2**32 - 1),
    st.integers(8, 32),
)
_v6 = st.builds(
    lambda a, p: ipaddress.ip_network((a, p), strict=False),
    st.integers(0, 2**128 - 1),
    st.integers(100, 128),
)


@settings(max_examples=300, deadline=None)
@given(
    networks=st.lists(st.one_of(_v4, _v6), max_size=12),
    picks=st.lists(st.tuples(st.integers(0, 11), st.integers(0, 2**128 - 1)), max_size=6),
    strangers=st.lists(st.ip_addresses(), max_size=3),
)
def test_exclude_blocks_exactly_the_input_minus_own_addresses(
    networks: list[Any], picks: list[tuple[int, int]], strangers: list[Any]
) -> None:
    """The result never holds an own address and covers every other address of the input, nothing more."""
    own = list(strangers)
    for index, offset in picks:  # own addresses that do fall inside the input
        if networks:
            network = networks[index % len(networks)]
            own.append(network[offset % network.num_addresses])
    result = [ipaddress.ip_network(n) for n in exclude([str(n) for n in networks], [str(a) for a in own])]
    union = list(ipaddress.collapse_addresses(n for n in networks if n.version == 4))
    union += list(ipaddress.collapse_addresses(n for n in networks if n.version == 6))
    inside = {a for a in own if any(a in n for n in union)}
    assert not any(a in n for a in own for n in result)
    assert all(any(r.version == u.version and r.subnet_of(u) for u in union) for r in result)
    assert sum(n.num_addresses for n in result) == sum(n.num_addresses for n in union) - len(inside)


def test_plan_skips_and_reports_invalid_entries_and_excluded_addresses() -> None:
    """Invalid entries (names included: nothing is resolved) are skipped and listed, own addresses named."""
    entries = ["10.0.0.7/24", "not-a-net", "", "example.com", "300.1.1.1", " 192.0.2.1 ", "2001:db8::/32"]
    result = plan(entries, own_addresses=["10.0.0.1", "::1"])
    assert result.invalid == ("not-a-net", "", "example.com", "300.1.1.1")
    assert result.excluded == ("10.0.0.1",)
    assert (result.ipv4, result.ipv6) == (len(result.networks) - 1, 1)
    assert "192.0.2.1/32" in result.networks
    assert result.networks[-1] == "2001:db8::/32"
    assert not result.truncated
    assert "4 invalid entries skipped" in result.summary()
    assert "own addresses left unblocked: 10.0.0.1" in result.summary()


def test_plan_bounds_the_number_of_elements_and_reports_truncation() -> None:
    """Beyond the limit the lowest networks are kept, IPv4 first, and the rest counted as dropped."""
    entries = [f"10.0.{i}.1" for i in range(0, 20, 2)] + ["2001:db8::1"]
    result = plan(entries, own_addresses=[], limit=4)
    assert result.networks == ("10.0.0.1/32", "10.0.2.1/32", "10.0.4.1/32", "10.0.6.1/32")
    assert (result.ipv4, result.ipv6, result.dropped, result.truncated) == (4, 0, 7, True)
    assert "truncated: 7 networks" in result.summary()


def test_parse_networks_clears_host_bits_and_keeps_families() -> None:
    """A CIDR with host bits set is accepted as its network; bare addresses become /32 and /128."""
    valid, invalid = parse_networks(["10.1.2.3/8", "::1", "1.2.3.4/33"])
    assert [str(n) for n in valid] == ["10.0.0.0/8", "::1/128"]
    assert invalid == ["1.2.3.4/33"]


# -- the in-memory twin and opening ------------------------------------------------------------------


def test_memory_firewall_records_applies_and_mirrors_the_protocol() -> None:
    """The twin records each list, holds the planned result, and fails like the real one when told."""
    firewall = MemoryFirewall(own_addresses=["10.0.0.1"])
    assert firewall.current() is None
    result = firewall.apply(["10.0.0.0/31", "bogus"])
    assert firewall.applied == [["10.0.0.0/31", "bogus"]]
    assert firewall.current() == ["10.0.0.0/32"] == list(result.networks)
    assert result.invalid == ("bogus",)
    firewall.fail_with = "Operation not permitted"
    with pytest.raises(EnforcementError, match="Operation not permitted"):
        firewall.apply([])
    firewall.fail_with = None
    assert firewall.current() == ["10.0.0.0/32"]
    assert firewall.remove() is True
    assert firewall.remove() is False
    assert firewall.current() is None


def test_has_net_admin_reads_the_effective_capability_set(tmp_path: Path) -> None:
    """CAP_NET_ADMIN (bit 12) in CapEff is what counts."""
    status = tmp_path / "status"
    status.write_text("Name:\tagent\nCapEff:\t0000000000001000\n")
    assert has_net_admin(status)
    status.write_text("Name:\tagent\nCapEff:\t000001ffffffefff\n")
    assert not has_net_admin(status)


def test_enforcement_is_off_and_says_so_without_net_admin(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without root or CAP_NET_ADMIN there is no firewall, a reason, and --remove-enforcement refuses."""
    monkeypatch.setattr(enforce, "has_net_admin", lambda: False)
    firewall, reason = open_firewall()
    assert firewall is None
    assert "not permitted" in reason
    assert "CAP_NET_ADMIN" in reason
    with pytest.raises(EnforcementError, match="cannot remove table inet telltale: not permitted"):
        remove_enforcement()


def test_enforcement_is_off_and_says_so_without_libnftables(monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing libnftables turns enforcement off with a reason naming it, without raising."""
    monkeypatch.setattr(enforce, "has_net_admin", lambda: True)
    firewall, reason = open_firewall(library="libnftables-absent.so.0")
    assert firewall is None
    assert reason.startswith("libnftables unavailable (libnftables-absent.so.0)")


# -- the real kernel, inside a network namespace -----------------------------------------------------


@contextmanager
def _host_untouched() -> Iterator[None]:
    """Skips without libnftables (or root, or nft); afterwards, the host namespace's tables are unchanged."""
    require_libnftables()
    with host_tables_unchanged():
        yield


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh namespace with OWN on lo and fd66::/64 routed locally; the host namespace untouched."""
    with _host_untouched(), network_namespace("tt-nft") as name:
        ip("-n", name, "addr", "add", f"{OWN}/32", "dev", "lo")
        ip("-n", name, "-6", "route", "add", "local", "fd66::/64", "dev", "lo")
        yield name


@pytest.fixture
def routed() -> Iterator[tuple[str, str, str]]:
    """Three namespaces: a client (10.77.1.2) routed through a router to a server (10.77.2.2)."""
    with (
        _host_untouched(),
        network_namespace("tt-nft-a") as client,
        network_namespace("tt-nft-r") as router,
        network_namespace("tt-nft-b") as server,
    ):
        for end, peer, near, far in (
            (client, "a0", "10.77.1.2", "10.77.1.1"),
            (server, "b0", "10.77.2.2", "10.77.2.1"),
        ):
            facing = f"r{peer[0]}"
            ip("-n", router, "link", "add", facing, "type", "veth", "peer", "name", peer, "netns", end)
            ip("-n", router, "addr", "add", f"{far}/24", "dev", facing)
            ip("-n", router, "link", "set", facing, "up")
            ip("-n", end, "addr", "add", f"{near}/24", "dev", peer)
            ip("-n", end, "link", "set", peer, "up")
            ip("-n", end, "route", "add", "default", "via", far)
        sysctl(router, "net.ipv4.ip_forward=1")
        yield client, router, server


def _in_ns(ns: str, op: str, arg: Any = None) -> Any:
    """Run one helper operation in `ns` as a fresh process; its JSON answer."""
    done = inside(ns, sys.executable, "-c", HELPER, op, input=json.dumps(arg) + "\n", timeout=CALL_TIMEOUT_S)
    assert done.returncode == 0, f"{op} in {ns} failed: {done.stderr.strip()}"
    return json.loads(done.stdout.splitlines()[-1])


def _start_in_ns(ns: str, op: str, arg: Any) -> subprocess.Popen[str]:
    """Start a long-running helper operation in `ns`, `arg` already sent; stop it with `_stop`."""
    process = subprocess.Popen(
        in_netns(ns, sys.executable, "-c", HELPER, op),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdin is not None
        process.stdin.write(json.dumps(arg) + "\n")
        process.stdin.flush()
    except BaseException:
        _stop(process)
        raise
    return process


def _nft(ns: str, script: str) -> str:
    """Run an nft script in `ns` (to inspect or to tamper with the table behind the agent's back)."""
    done = inside(ns, "nft", "-f", "-", input=script)
    assert done.returncode == 0, f"nft in {ns} failed: {done.stderr.strip()}"
    return done.stdout


def _assert_refused_fast(ns: str, host: str) -> None:
    outcome = _in_ns(ns, "connect", host)
    assert outcome["error"] == "ECONNREFUSED", outcome
    assert outcome["ms"] < FAST_MS, outcome


def _assert_connects(ns: str, host: str) -> None:
    outcome = _in_ns(ns, "connect", host)
    assert outcome["error"] is None, outcome


def test_blocked_address_fails_fast_then_connects_once_the_policy_changes(netns: str) -> None:
    """A blocked address is refused at once (ECONNREFUSED, well under a second); unblocked, it connects."""
    _assert_connects(netns, BLOCKED)
    applied = _in_ns(netns, "apply", [BLOCKED, "192.0.2.0/24"])
    assert applied["networks"] == [f"{BLOCKED}/32", "192.0.2.0/24"]
    _assert_refused_fast(netns, BLOCKED)
    _in_ns(netns, "apply", ["192.0.2.0/24"])
    _assert_connects(netns, BLOCKED)


def test_ipv6_networks_are_blocked_too(netns: str) -> None:
    """An IPv6 network in the list is refused the same way; IPv4 entries alongside still apply."""
    _assert_connects(netns, BLOCKED6)
    _in_ns(netns, "apply", ["fd66::/64", BLOCKED])
    _assert_refused_fast(netns, BLOCKED6)
    _assert_refused_fast(netns, BLOCKED)
    assert _in_ns(netns, "current") == [f"{BLOCKED}/32", "fd66::/64"]


def test_apply_is_idempotent(netns: str) -> None:
    """Applying the same list twice leaves the same table."""
    networks = [BLOCKED, "172.16.0.0/12", "172.17.0.0/16", "2001:db8::/32"]
    _in_ns(netns, "apply", networks)
    first = _nft(netns, "list table inet telltale")
    _in_ns(netns, "apply", networks)
    assert _nft(netns, "list table inet telltale") == first
    assert _in_ns(netns, "current") == [f"{BLOCKED}/32", "172.16.0.0/12", "2001:db8::/32"]
    _assert_refused_fast(netns, BLOCKED)


def test_table_outlives_the_agent_and_a_restart_reconciles_tampering(netns: str) -> None:
    """The table stays after the agent exits; a new agent's apply() undoes changed rules and elements."""
    _in_ns(netns, "apply", [BLOCKED])
    pristine = _nft(netns, "list table inet telltale")
    _assert_refused_fast(netns, BLOCKED)  # another process: the table outlived the one that applied it
    _nft(
        netns,
        "flush chain inet telltale output\n"
        "add rule inet telltale output accept\n"
        "add element inet telltale blocked4 { 10.9.9.9 }\n",
    )
    _assert_connects(netns, BLOCKED)
    assert _in_ns(netns, "current") == ["10.9.9.9/32", f"{BLOCKED}/32"]
    _in_ns(netns, "apply", [BLOCKED])
    assert _nft(netns, "list table inet telltale") == pristine
    _assert_refused_fast(netns, BLOCKED)


def test_apply_replaces_a_table_of_another_layout(netns: str) -> None:
    """A table with our name but other set flags, chain hooks and extra chains is rebuilt as ours."""
    _in_ns(netns, "apply", [BLOCKED])
    ours = _nft(netns, "list table inet telltale")
    _nft(
        netns,
        "delete table inet telltale\n"
        "table inet telltale {\n"
        "  set blocked4 { type ipv4_addr; }\n"
        "  chain output { type filter hook input priority 10; policy accept; }\n"
        "  chain extra { type filter hook output priority -10; policy accept; }\n"
        "}\n",
    )
    _in_ns(netns, "apply", [BLOCKED])
    assert _nft(netns, "list table inet telltale") == ours
    _assert_refused_fast(netns, BLOCKED)


def test_remove_deletes_the_table_and_then_reports_none_present(netns: str) -> None:
    """remove() deletes the table (traffic flows again); a second removal says there was none."""
    assert _in_ns(netns, "current") is None
    _in_ns(netns, "apply", [BLOCKED])
    assert _in_ns(netns, "remove") is True
    assert _in_ns(netns, "remove") is False
    assert _in_ns(netns, "current") is None
    _assert_connects(netns, BLOCKED)
    _in_ns(netns, "apply", [BLOCKED])
    assert _in_ns(netns, "remove_enforcement") == "removed table inet telltale"
    assert _in_ns(netns, "remove_enforcement") == "no telltale table present"


def test_the_hosts_own_addresses_are_never_blocked(netns: str) -> None:
    """A listed network holding the host's own addresses is applied around them, and they are reported."""
    applied = _in_ns(netns, "apply", [f"{OWN}/24", "127.0.0.0/8", "::1"])
    assert set(applied["excluded"]) == {OWN, "127.0.0.1", "::1"}
    held = [ipaddress.ip_network(n) for n in _in_ns(netns, "current")]
    for own in (OWN, "127.0.0.1", "::1"):
        assert not any(ipaddress.ip_address(own) in n for n in held)
    _assert_connects(netns, OWN)
    _assert_connects(netns, "127.0.0.1")
    _assert_refused_fast(netns, BLOCKED)  # the rest of 127.0.0.0/8 is blocked


def test_routed_traffic_through_the_host_is_blocked_too(routed: tuple[str, str, str]) -> None:
    """A connection the host forwards (a container's, a routed client's) is refused fast as well."""
    client, router, server = routed
    serving = _start_in_ns(server, "serve", "10.77.2.2")
    try:
        port = json.loads(_read_line(serving, within=30))
        assert _in_ns(client, "dial", ["10.77.2.2", port])["error"] is None
        _in_ns(router, "apply", ["10.77.2.0/24"])
        refused = _in_ns(client, "dial", ["10.77.2.2", port])
        assert refused["error"] == "ECONNREFUSED", refused
        assert refused["ms"] < FAST_MS, refused
        _in_ns(router, "apply", [])
        assert _in_ns(client, "dial", ["10.77.2.2", port])["error"] is None
    finally:
        _stop(serving)


def _stop(process: subprocess.Popen[str]) -> None:
    """Kill a helper process and reap it, closing its pipes."""
    process.kill()
    process.wait()
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream:
            stream.close()


def _read_line(process: subprocess.Popen[str], within: float) -> str:
    """The next line the process prints, waiting at most `within` seconds."""
    assert process.stdout is not None
    deadline = time.monotonic() + within
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if selector.select(timeout=deadline - time.monotonic()):
                return process.stdout.readline()
    raise AssertionError(f"no answer from the probe within {within} s")


def _ten_thousand(offset: int) -> list[str]:
    """10,000 disjoint /24s in 11.0.0.0/8 and up (every other one, from `offset`), plus BLOCKED."""
    base = int(ipaddress.IPv4Address("11.0.0.0"))
    return [str(ipaddress.IPv4Network((base + (2 * i + offset) * 256, 24))) for i in range(10_000)] + [
        BLOCKED
    ]


def test_replacing_a_large_set_never_lets_a_blocked_connection_through(netns: str) -> None:
    """While 10,000-network sets are replaced again and again, no connection to a blocked address succeeds."""
    _in_ns(netns, "apply", _ten_thousand(0))
    probe = _start_in_ns(netns, "probe", BLOCKED)
    try:
        assert probe.stdin is not None
        assert json.loads(_read_line(probe, within=30)) == "ready"
        times = _in_ns(netns, "replace", [_ten_thousand(i % 2) for i in range(1, 11)])
        probe.stdin.close()
        outcomes = json.loads(_read_line(probe, within=30))
    finally:
        _stop(probe)
    assert "connected" not in outcomes, outcomes
    assert set(outcomes) == {"ECONNREFUSED"}, outcomes
    assert outcomes["ECONNREFUSED"] >= 100, "the probe must have run throughout the replacements"
    print(f"apply() of 10,000 networks: {min(times):.3f}-{max(times):.3f} s; probe: {outcomes}")
