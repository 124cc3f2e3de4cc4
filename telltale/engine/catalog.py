"""The alert catalog: every alert type a policy can configure.

An alert type is declared here once (what triggers it, its parameters, its default priority)
and matched by the check of the same id in :mod:`telltale.engine.checks`. Adding a type means
adding one :class:`AlertTypeSpec` below and one check function there; the built-in policy
``Max Alert`` must then enable it (a test says so).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TypeAlias

from telltale.engine.params import ParamSpec, absolute_path, cidr, port, program_name, to_proto_value
from telltale.v1 import catalog_pb2, common_pb2

__all__ = ["CATALOG", "AlertTypeSpec", "ParamSpec", "to_proto"]

Category: TypeAlias = common_pb2.Category.ValueType
Priority: TypeAlias = common_pb2.Priority.ValueType
EventKind: TypeAlias = common_pb2.EventKind.ValueType


@dataclass(frozen=True, slots=True)
class AlertTypeSpec:
    """One entry of the catalog.

    ``event_kinds`` are the kinds of events the type's check looks at; evaluation hands each
    event only to the rules whose type lists its kind.
    """

    id: str
    category: Category
    title: str
    description: str
    rationale: str
    remediation: str
    params: tuple[ParamSpec, ...]
    default_priority: Priority
    blockable: bool
    event_kinds: frozenset[EventKind]
    exception_scopes: frozenset[str] = frozenset()
    """Which of the exception fields ``path`` and ``destination`` mean something for this type
    (``application``, ``component`` and ``binary`` always do)."""

    def param(self, name: str) -> ParamSpec | None:
        """Return the parameter called ``name``, or None."""
        for spec in self.params:
            if spec.name == name:
                return spec
        return None


_SPECS: tuple[AlertTypeSpec, ...] = (
    AlertTypeSpec(
        id="process.shell_launched",
        category=common_pb2.CATEGORY_PROCESS,
        title="Shell launched",
        description="A workload process ran a command shell: the program it executed is named like one "
        "of the configured shells.",
        rationale="Services rarely need a shell at run time. A shell started by a server process is a "
        "classic sign of command injection or of an attacker turning code execution into an "
        "interactive foothold.",
        remediation="Find the code path that runs the shell and call the needed program directly with "
        "an argument vector; if the shell is legitimate (an entrypoint script, a health check), add "
        "an exception for that binary with the reason.",
        params=(
            ParamSpec(
                "shells",
                "strings",
                "Program names (without directory) that count as shells.",
                ("sh", "bash", "dash", "zsh", "ksh", "csh", "tcsh", "fish", "busybox", "ash"),
                program_name,
            ),
        ),
        default_priority=common_pb2.PRIORITY_P2,
        blockable=False,
        event_kinds=frozenset({common_pb2.EVENT_KIND_EXEC}),
        exception_scopes=frozenset({"path"}),
    ),
    AlertTypeSpec(
        id="process.exec_from_writable_dir",
        category=common_pb2.CATEGORY_PROCESS,
        title="Program run from a writable directory",
        description="A workload process executed a program located under one of the configured "
        "world-writable or temporary directories. Relative paths are resolved against the "
        "process's starting directory when it is known; symbolic links are not followed.",
        rationale="Installed software lives in read-only system directories. Programs run from /tmp, "
        "/dev/shm and similar places are typically payloads dropped by an attacker.",
        remediation="Install the program into a directory owned by root and not writable by the "
        "workload, and run it from there.",
        params=(
            ParamSpec(
                "directories",
                "strings",
                "Absolute directories; a program anywhere below one of them triggers the alert.",
                ("/tmp", "/var/tmp", "/dev/shm", "/run/user"),
                absolute_path,
            ),
        ),
        default_priority=common_pb2.PRIORITY_P2,
        blockable=False,
        event_kinds=frozenset({common_pb2.EVENT_KIND_EXEC}),
        exception_scopes=frozenset({"path"}),
    ),
    AlertTypeSpec(
        id="network.listen_all_interfaces",
        category=common_pb2.CATEGORY_NETWORK,
        title="Listening on all interfaces",
        description="A workload listens for TCP connections, or binds a UDP socket, on the wildcard "
        "address (0.0.0.0 or ::), so it is reachable from every network the host is attached to. "
        "Calls that failed are ignored.",
        rationale="A service bound to every interface is exposed on networks it was never meant to "
        "serve, such as a management or public network.",
        remediation="Bind the service to the address of the interface it serves (or to loopback when "
        "only local clients use it), or list the port in ignore_ports if exposure is intended.",
        params=(
            ParamSpec(
                "ignore_ports",
                "ints",
                "Ports on which listening on all interfaces is expected.",
                (),
                port,
            ),
        ),
        default_priority=common_pb2.PRIORITY_P3,
        blockable=False,
        event_kinds=frozenset({common_pb2.EVENT_KIND_LISTEN, common_pb2.EVENT_KIND_BIND}),
    ),
    AlertTypeSpec(
        id="network.privileged_port",
        category=common_pb2.CATEGORY_NETWORK,
        title="Listening on a privileged port",
        description="A workload listens on a port at or below max_port, on any address. Port 0 (a "
        "port chosen by the kernel) and calls that failed are ignored.",
        rationale="Binding a privileged port needs root or CAP_NET_BIND_SERVICE; a workload doing it "
        "runs with more privilege than most services need.",
        remediation="Listen on an unprivileged port and forward to it, or grant only "
        "CAP_NET_BIND_SERVICE instead of running as root.",
        params=(
            ParamSpec(
                "max_port",
                "int",
                "The highest port considered privileged.",
                1023,
                port,
            ),
        ),
        default_priority=common_pb2.PRIORITY_P4,
        blockable=False,
        event_kinds=frozenset({common_pb2.EVENT_KIND_LISTEN}),
    ),
    AlertTypeSpec(
        id="network.blocklisted_destination",
        category=common_pb2.CATEGORY_NETWORK,
        title="Connection to a blocklisted destination",
        description="A workload attempted an IPv4 or IPv6 connection to an address inside one of the "
        "configured networks, whether or not the connection succeeded.",
        rationale="Blocklisted networks are known-bad or forbidden destinations: command and control "
        "servers, cloud metadata endpoints, networks the application must never reach.",
        remediation="Find why the workload contacts this destination; with action block, agents "
        "refuse such connections.",
        params=(
            ParamSpec(
                "networks",
                "strings",
                "Networks in CIDR notation (or single addresses) that must not be contacted.",
                (),
                cidr,
            ),
        ),
        default_priority=common_pb2.PRIORITY_P1,
        blockable=True,
        event_kinds=frozenset({common_pb2.EVENT_KIND_CONNECT}),
        exception_scopes=frozenset({"destination"}),
    ),
    AlertTypeSpec(
        id="node.workload_as_root",
        category=common_pb2.CATEGORY_NODE,
        title="Workload running as root",
        description="A workload process started a new program image with effective user id 0. Fork "
        "children are not reported separately.",
        rationale="A compromised process running as root owns the host; services should run under a "
        "dedicated unprivileged user.",
        remediation="Run the workload under an unprivileged user and grant only the capabilities it needs.",
        params=(),
        default_priority=common_pb2.PRIORITY_P3,
        blockable=False,
        event_kinds=frozenset({common_pb2.EVENT_KIND_PROCESS_START}),
        exception_scopes=frozenset({"path"}),
    ),
)

CATALOG: Mapping[str, AlertTypeSpec] = MappingProxyType({spec.id: spec for spec in _SPECS})
"""Every alert type, by id, in a stable order (the order the catalog lists them)."""


def to_proto(spec: AlertTypeSpec) -> catalog_pb2.AlertType:
    """Describe an alert type as the AlertType message of the catalog API."""
    return catalog_pb2.AlertType(
        id=spec.id,
        category=spec.category,
        title=spec.title,
        description=spec.description,
        rationale=spec.rationale,
        remediation=spec.remediation,
        params=[
            catalog_pb2.AlertTypeParam(
                name=param.name,
                type=param.type,
                description=param.description,
                default=to_proto_value(param.type, param.default),
            )
            for param in spec.params
        ],
        default_priority=spec.default_priority,
        blockable=spec.blockable,
    )
