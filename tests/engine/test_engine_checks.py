"""The first six alert types in depth: what fires each, what does not, parameters, exceptions."""

from __future__ import annotations

import pytest
from eventkit import (
    NOW,
    NS,
    OTHER,
    SHOP_API,
    SOCK_DGRAM,
    SOCK_NONBLOCK,
    SOCK_STREAM,
    compiled,
    exec_event,
    socket_event,
    subjects,
)

from telltale.v1 import common_pb2, policy_pb2

LISTEN = common_pb2.EVENT_KIND_LISTEN
BIND = common_pb2.EVENT_KIND_BIND
CONNECT = common_pb2.EVENT_KIND_CONNECT


def start_event(*, euid: int = 0, forked: bool = False, exe: str = "/usr/bin/python3") -> common_pb2.Event:
    return common_pb2.Event(
        kind=common_pb2.EVENT_KIND_PROCESS_START,
        count=1,
        process=common_pb2.ProcessInfo(pid=10, exe=exe, euid=euid, uid=euid, forked=forked),
    )


# process.shell_launched

SHELLS = "process.shell_launched: {}\n"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/bin/sh", ["/bin/sh"]),
        ("/usr/bin/bash", ["/usr/bin/bash"]),
        ("bash", ["bash"]),  # execvp with a bare name
        ("/bin/busybox", ["/bin/busybox"]),
        ("/usr/bin/ls", []),
        ("/bin/shx", []),
        ("/opt/sh/tool", []),
    ],
)
def test_shell_launched_fires_on_shell_programs_only(path: str, expected: list[str]) -> None:
    """An exec of a program named like a shell fires; other programs do not."""
    assert subjects(compiled(SHELLS).evaluate(exec_event(path), SHOP_API, NOW)) == expected


def test_shell_launched_summary_names_workload_and_program() -> None:
    """The summary reads 'application/component launched program'."""
    (finding,) = compiled(SHELLS).evaluate(exec_event("/bin/sh"), SHOP_API, NOW)
    assert finding.summary == "shop/api launched /bin/sh"
    assert finding.priority == common_pb2.PRIORITY_P2
    assert finding.category == common_pb2.CATEGORY_PROCESS


def test_shell_launched_uses_the_configured_shells() -> None:
    """Changing the shells parameter changes which programs fire."""
    policy = compiled("process.shell_launched: {params: {shells: [python3]}}\n")
    assert subjects(policy.evaluate(exec_event("/usr/bin/python3"), SHOP_API, NOW)) == ["/usr/bin/python3"]
    assert policy.evaluate(exec_event("/bin/sh"), SHOP_API, NOW) == []


def test_shell_launched_exception_by_binary_glob() -> None:
    """An exception on the acting binary silences that binary only."""
    policy = compiled(
        """
        process.shell_launched:
          exceptions:
            - {binary: /usr/bin/python*, reason: entrypoint script}
        """
    )
    assert policy.evaluate(exec_event("/bin/sh", exe="/usr/bin/python3.11"), SHOP_API, NOW) == []
    assert subjects(policy.evaluate(exec_event("/bin/sh", exe="/usr/bin/node"), SHOP_API, NOW)) == ["/bin/sh"]


def test_shell_launched_exception_by_path_and_application() -> None:
    """An exception scoped to an application and a program path leaves other applications and shells alone."""
    policy = compiled(
        """
        process.shell_launched:
          exceptions:
            - {application: shop, path: /bin/sh, reason: health check}
        """
    )
    assert policy.evaluate(exec_event("/bin/sh"), SHOP_API, NOW) == []
    assert subjects(policy.evaluate(exec_event("/bin/bash"), SHOP_API, NOW)) == ["/bin/bash"]
    assert subjects(policy.evaluate(exec_event("/bin/sh"), OTHER, NOW)) == ["/bin/sh"]


def test_expired_exception_no_longer_applies() -> None:
    """An exception applies before its expiry and not from the expiry on; now_ns decides."""
    policy = compiled(
        """
        process.shell_launched:
          exceptions:
            - {component: api, reason: migration, expires: "2027-01-15T00:00:00Z"}
        """
    )
    expiry = 1_799_971_200 * NS  # 2027-01-15T00:00:00Z
    assert policy.evaluate(exec_event("/bin/sh"), SHOP_API, expiry - 1) == []
    assert subjects(policy.evaluate(exec_event("/bin/sh"), SHOP_API, expiry)) == ["/bin/sh"]


def test_disabled_rule_never_fires() -> None:
    """A rule with enabled: false raises nothing."""
    assert (
        compiled("process.shell_launched: {enabled: false}\n").evaluate(exec_event("/bin/sh"), SHOP_API, NOW)
        == []
    )


# process.exec_from_writable_dir

WRITABLE = "process.exec_from_writable_dir: {}\n"


@pytest.mark.parametrize(
    ("path", "cwd", "expected"),
    [
        ("/tmp/x", "/", ["/tmp/x"]),
        ("/dev/shm/.hidden/run", "/", ["/dev/shm/.hidden/run"]),
        ("//tmp/x", "/", ["/tmp/x"]),
        ("./payload", "/var/tmp", ["/var/tmp/payload"]),
        ("../tmp/p", "/srv", ["/tmp/p"]),
        ("/tmp/../usr/bin/ls", "/", []),
        ("/tmpfoo/x", "/", []),
        ("/usr/bin/ls", "/tmp", []),
        ("payload", "/tmp", []),  # a bare name is looked up in PATH: unknown here
        ("./payload", "", []),
    ],
)
def test_exec_from_writable_dir_resolves_paths(path: str, cwd: str, expected: list[str]) -> None:
    """Programs under a writable directory fire, after resolving relative and dotted paths."""
    policy = compiled(WRITABLE)
    assert subjects(policy.evaluate(exec_event(path, cwd=cwd), SHOP_API, NOW)) == expected


def test_exec_from_writable_dir_uses_the_configured_directories() -> None:
    """Changing the directories parameter changes which programs fire."""
    policy = compiled("process.exec_from_writable_dir: {params: {directories: [/opt/scratch/]}}\n")
    assert subjects(policy.evaluate(exec_event("/opt/scratch/x"), SHOP_API, NOW)) == ["/opt/scratch/x"]
    assert policy.evaluate(exec_event("/tmp/x"), SHOP_API, NOW) == []


def test_exec_from_writable_dir_exception_by_path_glob() -> None:
    """An exception on the program path silences matching programs only."""
    policy = compiled(
        """
        process.exec_from_writable_dir:
          exceptions:
            - {path: "/tmp/build-*/cc1", reason: compiler in CI}
        """
    )
    assert policy.evaluate(exec_event("/tmp/build-42/cc1"), SHOP_API, NOW) == []
    assert subjects(policy.evaluate(exec_event("/tmp/evil"), SHOP_API, NOW)) == ["/tmp/evil"]


# network.listen_all_interfaces

ALL_IFS = "network.listen_all_interfaces: {}\n"


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (socket_event(LISTEN, "0.0.0.0", 8080), ["tcp/8080"]),
        (socket_event(LISTEN, "::", 443, sock_type=SOCK_STREAM | SOCK_NONBLOCK), ["tcp/443"]),
        (socket_event(BIND, "0.0.0.0", 53, sock_type=SOCK_DGRAM), ["udp/53"]),
        (socket_event(BIND, "::", 5353, sock_type=SOCK_DGRAM | SOCK_NONBLOCK), ["udp/5353"]),
        (socket_event(BIND, "0.0.0.0", 8080), []),  # a stream socket is exposed only once it listens
        (socket_event(LISTEN, "127.0.0.1", 8080), []),
        (socket_event(LISTEN, "10.0.0.5", 8080), []),
        (socket_event(LISTEN, "0.0.0.0", 8080, errno=98), []),  # EADDRINUSE: not listening
    ],
)
def test_listen_all_interfaces(event: common_pb2.Event, expected: list[str]) -> None:
    """Listening (TCP) or binding (UDP) on the wildcard address fires; other addresses and failures do not."""
    assert subjects(compiled(ALL_IFS).evaluate(event, SHOP_API, NOW)) == expected


def test_listen_all_interfaces_summary() -> None:
    """The summary names the workload and the exposed transport and port."""
    shop = common_pb2.Workload(id="w-3", application="shop")
    (finding,) = compiled(ALL_IFS).evaluate(socket_event(LISTEN, "0.0.0.0", 8080), shop, NOW)
    assert finding.summary == "shop listens on all interfaces (tcp/8080)"


def test_listen_all_interfaces_ignores_configured_ports() -> None:
    """Ports in ignore_ports do not fire; others still do."""
    policy = compiled("network.listen_all_interfaces: {params: {ignore_ports: [8080, 53]}}\n")
    assert policy.evaluate(socket_event(LISTEN, "0.0.0.0", 8080), SHOP_API, NOW) == []
    assert policy.evaluate(socket_event(BIND, "::", 53, sock_type=SOCK_DGRAM), SHOP_API, NOW) == []
    assert subjects(policy.evaluate(socket_event(LISTEN, "0.0.0.0", 8081), SHOP_API, NOW)) == ["tcp/8081"]


def test_listen_all_interfaces_exception_by_application() -> None:
    """An exception for one application leaves the others reported."""
    policy = compiled(
        """
        network.listen_all_interfaces:
          exceptions:
            - {application: shop, reason: public storefront}
        """
    )
    assert policy.evaluate(socket_event(LISTEN, "0.0.0.0", 80), SHOP_API, NOW) == []
    assert subjects(policy.evaluate(socket_event(LISTEN, "0.0.0.0", 80), OTHER, NOW)) == ["tcp/80"]


# network.privileged_port

PRIVILEGED = "network.privileged_port: {}\n"


@pytest.mark.parametrize(
    ("address", "port", "family", "errno", "expected"),
    [
        ("127.0.0.1", 80, "", 0, ["80"]),
        ("0.0.0.0", 1023, "", 0, ["1023"]),
        ("::1", 22, "", 0, ["22"]),
        ("127.0.0.1", 1024, "", 0, []),
        ("127.0.0.1", 0, "", 0, []),  # a port the kernel picks
        ("/run/app.sock", 0, "unix", 0, []),
        ("127.0.0.1", 80, "", 13, []),  # EACCES: it failed
    ],
)
def test_privileged_port(address: str, port: int, family: str, errno: int, expected: list[str]) -> None:
    """Listening on a port at or below 1023 fires, on any address."""
    event = socket_event(LISTEN, address, port, family=family, errno=errno)
    findings = compiled(PRIVILEGED).evaluate(event, SHOP_API, NOW)
    assert subjects(findings) == expected
    assert all(f.summary == f"shop/api listens on privileged port {port}" for f in findings)


def test_privileged_port_uses_max_port() -> None:
    """Raising max_port widens what counts as privileged."""
    policy = compiled("network.privileged_port: {params: {max_port: 8080}}\n")
    assert subjects(policy.evaluate(socket_event(LISTEN, "127.0.0.1", 8080), SHOP_API, NOW)) == ["8080"]
    assert policy.evaluate(socket_event(LISTEN, "127.0.0.1", 8081), SHOP_API, NOW) == []


def test_privileged_port_exception_by_component() -> None:
    """An exception for one component leaves other components reported."""
    policy = compiled(
        """
        network.privileged_port:
          exceptions:
            - {component: api, reason: serves https directly}
        """
    )
    assert policy.evaluate(socket_event(LISTEN, "0.0.0.0", 443), SHOP_API, NOW) == []
    assert subjects(policy.evaluate(socket_event(LISTEN, "0.0.0.0", 443), OTHER, NOW)) == ["443"]


# network.blocklisted_destination

BLOCKLIST = """
network.blocklisted_destination:
  params:
    networks: [203.0.113.0/24, 198.51.100.7, "2001:db8::/32"]
"""


@pytest.mark.parametrize(
    ("address", "family", "expected"),
    [
        ("203.0.113.7", "", ["203.0.113.7"]),
        ("203.0.113.255", "", ["203.0.113.255"]),
        ("198.51.100.7", "", ["198.51.100.7"]),
        ("2001:db8::1", "", ["2001:db8::1"]),
        ("::ffff:203.0.113.9", "", ["::ffff:203.0.113.9"]),
        ("203.0.114.0", "", []),
        ("198.51.100.8", "", []),
        ("2001:db9::1", "", []),
        ("not-an-address", "", []),
        ("/run/203.0.113.7", "unix", []),
    ],
)
def test_blocklisted_destination(address: str, family: str, expected: list[str]) -> None:
    """A connection to an address inside a listed network fires; others do not."""
    event = socket_event(CONNECT, address, 443, family=family)
    assert subjects(compiled(BLOCKLIST).evaluate(event, SHOP_API, NOW)) == expected


def test_blocklisted_destination_with_empty_blocklist_never_fires() -> None:
    """With no networks configured the rule cannot fire."""
    policy = compiled("network.blocklisted_destination: {}\n")
    assert policy.evaluate(socket_event(CONNECT, "203.0.113.7", 443), SHOP_API, NOW) == []
    assert policy.active_types == frozenset()


def test_blocklisted_destination_reports_the_action_and_summary() -> None:
    """A block rule's findings carry the block action, and the summary names the address."""
    policy = compiled(
        "network.blocklisted_destination: {action: block, params: {networks: [203.0.113.0/24]}}\n"
    )
    (finding,) = policy.evaluate(socket_event(CONNECT, "203.0.113.7", 443), SHOP_API, NOW)
    assert finding.action == policy_pb2.RULE_ACTION_BLOCK
    assert finding.priority == common_pb2.PRIORITY_P1
    assert finding.summary == "shop/api connects to blocklisted address 203.0.113.7"


def test_blocklisted_destination_exception_by_destination() -> None:
    """An exception for a sub-network silences addresses inside it only."""
    policy = compiled(
        """
        network.blocklisted_destination:
          params: {networks: [203.0.113.0/24]}
          exceptions:
            - {destination: 203.0.113.128/25, reason: partner gateway}
        """
    )
    assert policy.evaluate(socket_event(CONNECT, "203.0.113.200", 443), SHOP_API, NOW) == []
    assert subjects(policy.evaluate(socket_event(CONNECT, "203.0.113.7", 443), SHOP_API, NOW)) == [
        "203.0.113.7"
    ]


# node.workload_as_root

ROOT = "node.workload_as_root: {}\n"


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (start_event(), ["/usr/bin/python3"]),
        (start_event(euid=1000), []),
        (start_event(forked=True), []),
        (common_pb2.Event(kind=common_pb2.EVENT_KIND_PROCESS_START, count=1), []),  # nothing known
    ],
)
def test_workload_as_root(event: common_pb2.Event, expected: list[str]) -> None:
    """A new program image with effective uid 0 fires; fork children and other users do not."""
    assert subjects(compiled(ROOT).evaluate(event, SHOP_API, NOW)) == expected


def test_workload_as_root_summary() -> None:
    """The summary names the program running as root."""
    (finding,) = compiled(ROOT).evaluate(start_event(exe="/usr/sbin/nginx"), SHOP_API, NOW)
    assert finding.summary == "shop/api runs /usr/sbin/nginx as root"
    assert finding.category == common_pb2.CATEGORY_NODE


def test_workload_as_root_exception_by_path_and_priority_override() -> None:
    """An exception on the program path applies; the policy's priority replaces the catalog default."""
    policy = compiled(
        """
        node.workload_as_root:
          priority: P1
          exceptions:
            - {path: /usr/sbin/*, reason: drops privileges after start}
        """
    )
    assert policy.evaluate(start_event(exe="/usr/sbin/nginx"), SHOP_API, NOW) == []
    (finding,) = policy.evaluate(start_event(exe="/opt/app/run"), SHOP_API, NOW)
    assert finding.priority == common_pb2.PRIORITY_P1
