"""The checks of the catalog's alert types: one small function per type.

A check factory receives a rule's complete, validated parameters and returns a check: a
function of one event that returns a :class:`Hit` when the event triggers the alert type, else
None. The factory does all the preparation (sets, ranges); the check runs once per event and
must stay cheap. A factory returns None when its parameters make the rule unable to fire (an
empty blocklist), so evaluation skips it altogether.

A check only sees events of the kinds its alert type lists in ``event_kinds``.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Mapping
from typing import NamedTuple, cast

from telltale.engine.netranges import AddressRanges
from telltale.engine.params import ParamValue
from telltale.v1 import common_pb2


class Hit(NamedTuple):
    """What a check found.

    ``subject`` is what the finding is about (it is part of the fingerprint); ``text`` completes
    the summary after the workload's name ("launched /bin/sh"); ``path`` and ``destination``
    are what exceptions with those fields are matched against.
    """

    subject: str
    text: str
    path: str = ""
    destination: str = ""


Check = Callable[[common_pb2.Event], Hit | None]
CheckFactory = Callable[[Mapping[str, ParamValue]], Check | None]

CHECKS: dict[str, CheckFactory] = {}
"""Check factories by alert type id; every catalog type has one."""

_SOCK_TYPE_MASK = 0xF  # strips SOCK_NONBLOCK / SOCK_CLOEXEC
_SOCK_STREAM = 1
_SOCK_DGRAM = 2
_TRANSPORTS = {_SOCK_STREAM: "tcp", _SOCK_DGRAM: "udp"}
_WILDCARDS = frozenset({"0.0.0.0", "::"})
_INET = frozenset({"inet", "inet6"})


def check(type_id: str) -> Callable[[CheckFactory], CheckFactory]:
    """Register the decorated function as the check factory of alert type ``type_id``."""

    def register(factory: CheckFactory) -> CheckFactory:
        if type_id in CHECKS:
            raise ValueError(f"two checks for {type_id}")
        CHECKS[type_id] = factory
        return factory

    return register


def _strings(params: Mapping[str, ParamValue], name: str) -> tuple[str, ...]:
    return cast(tuple[str, ...], params[name])


def _ints(params: Mapping[str, ParamValue], name: str) -> tuple[int, ...]:
    return cast(tuple[int, ...], params[name])


def _failed(event: common_pb2.Event) -> bool:
    result = event.result
    return result.known and result.error_number != 0


def resolve_program(path: str, cwd: str) -> str | None:
    """The normalised absolute path of a program run as ``path`` from directory ``cwd``.

    None for a bare name (looked up in PATH, so unknown here) or a relative path with no known
    directory. Symbolic links are not resolved.
    """
    if not path.startswith("/"):
        if "/" not in path or not cwd.startswith("/"):
            return None
        path = f"{cwd}/{path}"
    elif "/." not in path and "//" not in path:
        return path
    return "/" + posixpath.normpath(path).lstrip("/")


@check("process.shell_launched")
def _shell_launched(params: Mapping[str, ParamValue]) -> Check | None:
    shells = frozenset(_strings(params, "shells"))
    if not shells:
        return None

    def match(event: common_pb2.Event) -> Hit | None:
        path = event.exec.path
        if path.rpartition("/")[2] not in shells:
            return None
        return Hit(path, f"launched {path}", path=path)

    return match


@check("process.exec_from_writable_dir")
def _exec_from_writable_dir(params: Mapping[str, ParamValue]) -> Check | None:
    prefixes = tuple(d.rstrip("/") + "/" for d in _strings(params, "directories"))
    if not prefixes:
        return None

    def match(event: common_pb2.Event) -> Hit | None:
        path = event.exec.path
        if path.startswith("/") and not path.startswith(prefixes) and "/." not in path and "//" not in path:
            return None  # the common case: an absolute, normal path outside every directory
        full = resolve_program(path, event.process.cwd)
        if full is None or not full.startswith(prefixes):
            return None
        return Hit(full, f"ran {full} from a writable directory", path=full)

    return match


@check("network.listen_all_interfaces")
def _listen_all_interfaces(params: Mapping[str, ParamValue]) -> Check:
    ignored = frozenset(_ints(params, "ignore_ports"))

    def match(event: common_pb2.Event) -> Hit | None:
        socket = event.socket
        address = socket.address
        if address.address not in _WILDCARDS or address.port in ignored:
            return None
        sock_type = socket.type & _SOCK_TYPE_MASK
        if event.kind == common_pb2.EVENT_KIND_BIND and sock_type != _SOCK_DGRAM:
            return None  # a bound stream socket is only exposed once it listens
        if _failed(event):
            return None
        subject = f"{_TRANSPORTS.get(sock_type, f'type{sock_type}')}/{address.port}"
        return Hit(subject, f"listens on all interfaces ({subject})")

    return match


@check("network.privileged_port")
def _privileged_port(params: Mapping[str, ParamValue]) -> Check | None:
    max_port = cast(int, params["max_port"])
    if max_port < 1:
        return None

    def match(event: common_pb2.Event) -> Hit | None:
        address = event.socket.address
        port = address.port
        if not 0 < port <= max_port or address.family not in _INET or _failed(event):
            return None
        return Hit(str(port), f"listens on privileged port {port}")

    return match


@check("network.blocklisted_destination")
def _blocklisted_destination(params: Mapping[str, ParamValue]) -> Check | None:
    blocked = AddressRanges(_strings(params, "networks"))
    if not blocked:
        return None
    contains = blocked.contains

    def match(event: common_pb2.Event) -> Hit | None:
        address = event.socket.address
        if address.family not in _INET or not contains(address.address):
            return None
        text = address.address
        return Hit(text, f"connects to blocklisted address {text}", destination=text)

    return match


@check("node.workload_as_root")
def _workload_as_root(params: Mapping[str, ParamValue]) -> Check:
    del params  # no parameters

    def match(event: common_pb2.Event) -> Hit | None:
        if not event.HasField("process"):
            return None
        process = event.process
        if process.euid != 0 or process.forked:
            return None
        exe = process.exe or (process.argv[0] if process.argv else "") or "an unknown program"
        return Hit(exe, f"runs {exe} as root", path=process.exe)

    return match
