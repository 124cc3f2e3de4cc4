"""The kernel's host-state source: `KernelHostState` samples interfaces, addresses and default
routes (rtnetlink), listening sockets (sock_diag) and their owners (/proc/*/fd), and kernel
settings (/proc/sys), and wakes on rtnetlink change notifications.

Everything is read from the network namespace the agent runs in (netlink sockets and
/proc/sys/net bind to the namespace of the thread that opens them; the agent's threads all share
the process's). Sizes are bounded: at most MAX_INTERFACES interfaces (MAX_ADDRESSES each),
MAX_DEFAULT_ROUTES default routes and MAX_LISTENING listening sockets are reported (over a
bound, promiscuous and up interfaces and non-loopback listeners are kept first, and the
truncation is logged once); the owner scan of /proc reads at most MAX_OWNER_SCAN_FDS descriptors
and runs only when listeners with an unknown owner appear.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import platform
import socket
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import trio
from pyroute2 import DiagSocket, IPRoute

from telltale.v1 import agent_pb2, common_pb2

log = logging.getLogger(__name__)

MAX_INTERFACES = 256
MAX_ADDRESSES = 64  # per interface
MAX_DEFAULT_ROUTES = 64
MAX_LISTENING = 1024
MAX_OWNER_SCAN_FDS = 262_144  # descriptor links read per owner scan of /proc
MAX_SYSCTL_BYTES = 4096
DRAIN_LIMIT = 1024  # notifications read per wake-up

# The kernel settings reported: every name the node checks read by default (see
# telltale.engine.catalog_node), plus the core pattern, which consoles show.
SYSCTLS: tuple[str, ...] = (
    "net.ipv4.ip_forward",
    "net.ipv6.conf.all.forwarding",
    "kernel.randomize_va_space",
    "kernel.yama.ptrace_scope",
    "kernel.core_pattern",
    "kernel.unprivileged_bpf_disabled",
    "kernel.kptr_restrict",
    "kernel.dmesg_restrict",
    "fs.protected_symlinks",
    "fs.protected_hardlinks",
    "fs.suid_dumpable",
    "net.ipv4.conf.all.accept_redirects",
    "net.ipv4.conf.all.accept_source_route",
    "net.ipv4.tcp_syncookies",
)

# rtnetlink multicast groups (linux/rtnetlink.h, as in pyroute2.netlink.rtnl): links, addresses,
# routes, and the per-family "netconf" groups that announce forwarding changes.
_GROUPS = (1, 5, 9, 7, 11, 24, 25)  # LINK, IPV4_IFADDR, IPV6_IFADDR, IPV4_ROUTE, IPV6_ROUTE, *_NETCONF
_NETLINK_ROUTE = 0
_IFF_UP = 0x1
_IFF_PROMISC = 0x100
_MAIN_TABLE = 254
_TCP_LISTEN = 10  # sock_diag states
_TCP_CLOSE = 7  # an unconnected UDP socket
_FAMILIES = {socket.AF_INET: "inet", socket.AF_INET6: "inet6"}


class _Complaints:
    """Log each failing part once, until it works again."""

    def __init__(self) -> None:
        self._failing: set[str] = set()

    def failed(self, part: str, exc: BaseException) -> None:
        self.warn(part, f"host state: cannot read {part} ({exc}); reporting without it")

    def warn(self, part: str, message: str) -> None:
        if part not in self._failing:
            self._failing.add(part)
            log.warning("%s", message)

    def ok(self, part: str) -> None:
        if part in self._failing:
            self._failing.discard(part)
            log.info("host state: %s readable again", part)


class KernelHostState:
    """The real HostStateSource: rtnetlink and sock_diag through pyroute2, /proc for the rest.

    The change subscription is opened by the first `snapshot` or `wait_change`, before anything
    is read, so no change between the two is missed. `sample()` is the blocking form of
    `snapshot()` (it dumps netlink tables and may scan /proc); `snapshot()` runs it in a worker
    thread. Parts that cannot be read (no netlink, /proc not mounted, a setting absent on this
    kernel) are left out and logged once. Not for use from inside a running asyncio loop
    (pyroute2's synchronous API runs its own).

    Only the kernel settings named in `sysctls` are reported: a policy expecting another one
    (node.kernel_hardening takes any name) finds it unreported, hence not judged. Listening
    sockets are TCP sockets in LISTEN and bound, unconnected UDP sockets; their owner is the
    lowest pid found holding the socket when it first appeared (best effort: none when the scan
    is over budget or the holder is not visible in this /proc).
    """

    def __init__(self, sysctls: Iterable[str] = SYSCTLS, proc: Path = Path("/proc")) -> None:
        self.sysctls = tuple(sysctls)
        self.proc = proc
        self._complaints = _Complaints()
        self._lock = threading.Lock()
        self._owners: dict[int, tuple[int, str]] = {}  # socket inode -> (pid, exe)
        self._unowned: set[int] = set()  # inodes a scan did not find: not scanned for again
        self._events: socket.socket | None = None
        self._subscribed = False
        self._closed = False

    # -- notifications ---------------------------------------------------------------------
    def _subscribe(self) -> socket.socket | None:
        if not self._subscribed and not self._closed:
            self._subscribed = True
            try:
                sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_ROUTE)
                try:
                    sock.setblocking(False)
                    sock.bind((0, sum(1 << (group - 1) for group in _GROUPS)))
                except OSError:
                    sock.close()
                    raise
                self._events = sock
            except OSError as exc:
                log.warning("host state: no netlink notifications (%s); polling only", exc)
        return self._events

    async def wait_change(self) -> None:
        """Return after the next rtnetlink notification (or a lost one: the queue overflowed)."""
        sock = self._subscribe()
        while sock is not None:
            await trio.lowlevel.wait_readable(sock)
            try:
                if self._drain(sock):
                    return
            except OSError as exc:
                log.warning("host state: netlink notifications failed (%s); polling only", exc)
                self.close()
                sock = None
        await trio.sleep_forever()

    @staticmethod
    def _drain(sock: socket.socket) -> bool:
        """Read the queued notifications (at most DRAIN_LIMIT); True when there was one (or some
        were lost). Raises OSError when the socket fails."""
        seen = False
        for _ in range(DRAIN_LIMIT):
            try:
                if not sock.recv(65536):
                    return seen
                seen = True
            except BlockingIOError:
                return seen
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:  # overflow: notifications lost, so re-sample
                    raise
                seen = True
        return True  # more are queued: the next wait returns at once

    def close(self) -> None:
        self._closed = True
        if self._events is not None:
            with contextlib.suppress(RuntimeError):  # outside trio nobody can be waiting on it
                trio.lowlevel.notify_closing(self._events)
            self._events.close()
            self._events = None

    # -- sampling --------------------------------------------------------------------------
    async def snapshot(self) -> agent_pb2.NodeState:
        self._subscribe()
        return await trio.to_thread.run_sync(self.sample, abandon_on_cancel=True)

    def sample(self) -> agent_pb2.NodeState:
        """Blocking: a full snapshot of what can be read now. Thread-safe; never raises OSError."""
        with self._lock:
            state = agent_pb2.NodeState(full=True, kernel=platform.release())
            state.time.GetCurrentTime()
            self._read_rtnetlink(state)
            self._read_listening(state)
            self._read_sysctls(state)
            return state

    def _read_rtnetlink(self, state: agent_pb2.NodeState) -> None:
        try:
            with IPRoute() as ipr:
                links = ipr.get_links()
                addresses = ipr.get_addr()
                routes = ipr.get_default_routes(table=_MAIN_TABLE)
        except Exception as exc:  # pyroute2 raises its own NetlinkError besides OSError
            self._complaints.failed("interfaces and routes (rtnetlink)", exc)
            return
        self._complaints.ok("interfaces and routes (rtnetlink)")
        names: dict[int, str] = {}
        interfaces: dict[int, agent_pb2.InterfaceState] = {}
        for link in links:
            index, name = int(link["index"]), str(link.get("ifname") or "")
            flags, promiscuity = int(link["flags"]), int(link.get("promiscuity") or 0)
            names[index] = name
            interfaces[index] = agent_pb2.InterfaceState(
                name=name,
                up=bool(flags & _IFF_UP),
                # A user's "promisc on" sets the flag; a packet socket only counts promiscuity.
                promiscuous=bool(flags & _IFF_PROMISC) or promiscuity > 0,
            )
        for address in addresses:
            interface = interfaces.get(int(address["index"]))
            text = address.get("local") or address.get("address")  # IFA_ADDRESS is the peer on p2p
            if interface is not None and text:
                interface.addresses.append(f"{text}/{int(address['prefixlen'])}")
        # Over the bound, promiscuous and up interfaces are the ones kept.
        kept = sorted(interfaces.values(), key=lambda i: (not i.promiscuous, not i.up, i.name))
        self._bound("interfaces", len(kept), MAX_INTERFACES)
        for interface in sorted(kept[:MAX_INTERFACES], key=lambda i: i.name):
            interface.addresses[:] = sorted(set(interface.addresses))[:MAX_ADDRESSES]
            state.interfaces.append(interface)
        gateways = {gateway for route in routes for gateway in _gateways(route, names)}
        state.default_routes.extend(sorted(gateways)[:MAX_DEFAULT_ROUTES])

    def _read_listening(self, state: agent_pb2.NodeState) -> None:
        try:
            found: dict[tuple[str, str, str, int], int] = {}
            with DiagSocket() as diag:
                diag.bind()
                for family, family_name in _FAMILIES.items():
                    for protocol, states in (("tcp", _TCP_LISTEN), ("udp", _TCP_CLOSE)):
                        number = socket.IPPROTO_TCP if protocol == "tcp" else socket.IPPROTO_UDP
                        for msg in diag.get_sock_stats(family=family, states=1 << states, protocol=number):
                            port = int(msg["idiag_sport"])
                            if port == 0 or int(msg["idiag_dport"]) != 0:
                                continue  # unbound, or a connected UDP socket
                            key = (protocol, family_name, str(msg["idiag_src"]), port)
                            found[key] = min(found.get(key, 1 << 62), int(msg["idiag_inode"]))
        except Exception as exc:
            self._complaints.failed("listening sockets (sock_diag)", exc)
            return
        self._complaints.ok("listening sockets (sock_diag)")
        # Over the bound, loopback listeners are the ones left out first.
        keys = sorted(found, key=lambda k: (_is_loopback(k[2]), k))
        self._bound("listening sockets", len(keys), MAX_LISTENING)
        keys = sorted(keys[:MAX_LISTENING])
        owners = self._resolve_owners({found[key] for key in keys})
        for key in keys:
            protocol, family_name, address, port = key
            pid, exe = owners.get(found[key], (0, ""))
            state.listening.append(
                agent_pb2.ListeningSocket(
                    protocol=protocol,
                    address=common_pb2.SocketAddress(family=family_name, address=address, port=port),
                    pid=pid,
                    exe=exe,
                )
            )

    def _bound(self, what: str, count: int, limit: int) -> None:
        """Log once (until back under it) that `count` of `what` exceed the reported `limit`."""
        if count > limit:
            message = f"host state: {count} {what}, only {limit} reported"
            self._complaints.warn(f"all {what}", message)
        else:
            self._complaints.ok(f"all {what}")

    def _resolve_owners(self, inodes: set[int]) -> dict[int, tuple[int, str]]:
        """Owners of these socket inodes, best effort: a /proc scan runs only for new inodes."""
        self._owners = {i: o for i, o in self._owners.items() if i in inodes}
        self._unowned &= inodes
        wanted = inodes - self._owners.keys() - self._unowned - {0}
        if wanted:
            found = _scan_owners(self.proc, wanted, MAX_OWNER_SCAN_FDS)
            self._owners.update(found)
            self._unowned |= wanted - found.keys()
        return self._owners

    def _read_sysctls(self, state: agent_pb2.NodeState) -> None:
        for name in self.sysctls:
            path = self.proc / "sys" / name.replace(".", "/")
            try:
                with path.open("rb") as f:
                    value = f.read(MAX_SYSCTL_BYTES)
            except FileNotFoundError:
                continue  # not on this kernel (e.g. no Yama): not reported, not judged
            except OSError as exc:
                self._complaints.failed(f"kernel setting {name}", exc)
                continue
            self._complaints.ok(f"kernel setting {name}")
            state.sysctls[name] = value.decode(errors="replace").rstrip("\n")


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _gateways(route: Any, names: dict[int, str]) -> Iterator[str]:
    """What a default route leads to: its gateway(s), else the device ("dev eth0")."""
    found = False
    hops = [route, *(route.get("multipath") or ())]
    for hop in hops:
        via = hop.get("via")
        gateway = hop.get("gateway") or (via.get("addr") if isinstance(via, dict) else None)
        if gateway:
            found = True
            yield str(gateway)
    if not found:
        oif = route.get("oif")
        if oif is not None:
            yield f"dev {names.get(int(oif), str(oif))}"


def _scan_owners(proc: Path, inodes: set[int], max_fds: int) -> dict[int, tuple[int, str]]:
    """Map socket inodes to (lowest pid holding one, its executable), reading /proc/*/fd.

    Reads at most `max_fds` descriptor links; processes that vanish or deny access are skipped.
    """
    owners: dict[int, tuple[int, str]] = {}
    budget = max_fds
    try:
        pids = sorted(int(entry) for entry in os.listdir(proc) if entry.isdigit())
    except OSError:
        return owners
    for pid in pids:
        if budget <= 0 or len(owners) == len(inodes):
            break
        fd_dir = proc / str(pid) / "fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds[:budget]:
            budget -= 1
            try:
                target = os.readlink(fd_dir / fd)
            except OSError:
                continue
            if not (target.startswith("socket:[") and target[8:-1].isdigit()):
                continue
            inode = int(target[8:-1])
            if inode in inodes and inode not in owners:
                try:
                    exe = os.readlink(proc / str(pid) / "exe")
                except OSError:
                    exe = ""
                owners[inode] = (pid, exe)
    return owners
