"""The facts of an event that checks read, extracted once per event.

Reading a field of a protobuf message costs far more than reading a tuple, and several rules
look at the same fields of the same event. So evaluation reads the fields the checks of an
event's kind need into one plain named tuple, once, and hands that to every check of the kind:

- :class:`SocketFacts` for CONNECT, BIND, LISTEN, ACCEPT and SEND;
- :class:`ExecFacts` for EXEC;
- :class:`StartFacts` for PROCESS_START;
- :class:`FileFacts` for FILE_OPEN and FILE_CHANGE.

Checks of the other (rarer) kinds receive the Event itself. :data:`EXTRACTORS` maps each kind to
its extractor. The tuples hold only what most checks of the kind read on every event; what a
check reads only when it is about to fire stays in the event the tuple carries.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import NamedTuple

from telltale.v1 import common_pb2

__all__ = [
    "EXTRACTORS",
    "ExecFacts",
    "Extractor",
    "FileFacts",
    "SocketFacts",
    "StartFacts",
    "extract",
    "normal_path",
]

_new = tuple.__new__  # positional construction without NamedTuple's keyword handling
_SOCK_TYPE_MASK = 0xF  # strips SOCK_NONBLOCK / SOCK_CLOEXEC


def normal_path(path: str) -> str:
    """``path`` with ``.``/``..`` segments and doubled slashes removed (absolute paths only)."""
    if not path.startswith("/") or ("/." not in path and "//" not in path):
        return path
    return "/" + posixpath.normpath(path).lstrip("/")


class SocketFacts(NamedTuple):
    """A connect, bind, listen, accept or send: the address and port (the peer for connect,
    accept and send; the local side for bind and listen). ``event`` is the event itself, for
    what checks read only when they are about to fire (see :func:`is_inet`,
    :func:`sock_type`, the call's result)."""

    kind: int
    address: str
    port: int
    event: common_pb2.Event


class ExecFacts(NamedTuple):
    """An exec: the program path as given and its last component (the program's name).
    ``event`` as for sockets (the entry point, the acting process)."""

    path: str
    name: str
    event: common_pb2.Event


class StartFacts(NamedTuple):
    """A process start of a new program image: its path, its name for summaries (the path,
    else argv[0], else a placeholder), its effective user id, and ``process`` for the fields
    only some checks read.

    Fork children and starts without process information have no facts (the extractor gives
    None), so no check sees them: every check of process starts is about the program a process
    runs, which a fork child shares with its parent.
    """

    exe: str
    program: str
    euid: int
    process: common_pb2.ProcessInfo


class FileFacts(NamedTuple):
    """A file open or change: its normalised path (for a rename, the source). ``event`` as for
    sockets (open flags, the kind of change, a rename's destination, a new mode)."""

    kind: int
    path: str
    event: common_pb2.Event


_INET = frozenset({"inet", "inet6"})


def is_inet(event: common_pb2.Event) -> bool:
    """True when the socket event's address is an IPv4 or IPv6 one."""
    return event.socket.address.family in _INET


def sock_type(event: common_pb2.Event) -> int:
    """The socket event's SOCK_* type, without flags."""
    return event.socket.type & _SOCK_TYPE_MASK


def _socket(event: common_pb2.Event, kind: int) -> SocketFacts:
    address = event.socket.address
    return _new(SocketFacts, (kind, address.address, address.port, event))


def _exec(event: common_pb2.Event, kind: int) -> ExecFacts:
    path = event.exec.path
    return _new(ExecFacts, (path, path.rpartition("/")[2], event))


def _start(event: common_pb2.Event, kind: int) -> StartFacts | None:
    if not event.HasField("process"):
        return None
    process = event.process
    if process.forked:
        return None
    exe = process.exe
    program = exe or (process.argv[0] if process.argv else "") or "an unknown program"
    return _new(StartFacts, (exe, program, process.euid, process))


def _file_open(event: common_pb2.Event, kind: int) -> FileFacts:
    path = event.file.path
    if "/." in path or "//" in path:
        path = normal_path(path)
    return _new(FileFacts, (kind, path, event))


def _file_change(event: common_pb2.Event, kind: int) -> FileFacts:
    return _new(FileFacts, (kind, normal_path(event.file_change.path), event))


Extractor = Callable[[common_pb2.Event, int], object]
"""Reads the facts of an event of the given kind; None means no check needs to see the event."""

EXTRACTORS: Mapping[int, Extractor] = MappingProxyType(
    {
        common_pb2.EVENT_KIND_CONNECT: _socket,
        common_pb2.EVENT_KIND_BIND: _socket,
        common_pb2.EVENT_KIND_LISTEN: _socket,
        common_pb2.EVENT_KIND_ACCEPT: _socket,
        common_pb2.EVENT_KIND_SEND: _socket,
        common_pb2.EVENT_KIND_EXEC: _exec,
        common_pb2.EVENT_KIND_PROCESS_START: _start,
        common_pb2.EVENT_KIND_FILE_OPEN: _file_open,
        common_pb2.EVENT_KIND_FILE_CHANGE: _file_change,
    }
)


def extract(event: common_pb2.Event) -> object:
    """The facts checks of ``event``'s kind receive: a facts tuple, the event itself, or None
    when no check needs to see it."""
    kind = event.kind
    extractor = EXTRACTORS.get(kind)
    return event if extractor is None else extractor(event, kind)
