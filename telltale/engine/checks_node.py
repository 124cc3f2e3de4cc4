"""Checks of the node category (see :mod:`telltale.engine.catalog_node`): three on workload
process starts (as :class:`~telltale.engine.facts.StartFacts`), the others on host state
reports."""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping

from telltale.engine.checkbase import (
    INET,
    Check,
    Context,
    Hit,
    NodeCheck,
    check,
    flag,
    globs,
    integer,
    ints,
    node_check,
    strings,
)
from telltale.engine.facts import StartFacts
from telltale.engine.linux import CAPABILITY_BITS, capability_names
from telltale.engine.netranges import AddressRanges, is_public
from telltale.engine.params import SYSCTL_EXPECTATION, ParamValue
from telltale.v1 import agent_pb2

# Checks on workload events.


@check("node.workload_as_root")
def _workload_as_root(params: Mapping[str, ParamValue], context: Context) -> Check:
    del params  # no parameters

    def match(f: StartFacts) -> Hit | None:
        if f.euid != 0:
            return None
        return Hit(f.program, f"runs {f.program} as root", path=f.exe)

    return match


@check("node.dangerous_capabilities")
def _dangerous_capabilities(params: Mapping[str, ParamValue], context: Context) -> Check | None:
    mask = 0
    for name in strings(params, "capabilities"):
        mask |= CAPABILITY_BITS[name]
    if not mask:
        return None
    include_permitted = flag(params, "include_permitted")
    ignore_root = flag(params, "ignore_root")

    def match(f: StartFacts) -> Hit | None:
        process = f.process
        held = process.capabilities_effective
        if include_permitted:
            held |= process.capabilities_permitted
        found = held & mask
        if not found or (ignore_root and f.euid == 0):
            return None
        names = ",".join(capability_names(found))
        return Hit(f"{f.program} ({names})", f"runs {f.program} with {names}", path=f.exe)

    return match


@check("node.secret_environment")
def _secret_environment(params: Mapping[str, ParamValue], context: Context) -> Check:
    ignored = globs(strings(params, "ignore_names"))

    def match(f: StartFacts) -> Hit | None:
        secrets = f.process.secret_env_names
        if not secrets:
            return None
        names = sorted({n for n in secrets if ignored is None or not ignored(n)})
        if not names:
            return None
        subject = ",".join(names)
        return Hit(subject, f"runs {f.program} with secrets in its environment ({subject})")

    return match


# Checks on host state.


def sysctl_int(state: agent_pb2.NodeState, name: str) -> int | None:
    """The integer value of kernel setting ``name``, or None when absent or not one integer."""
    value = state.sysctls.get(name)
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        return None


@node_check("node.ip_forwarding")
def _ip_forwarding(params: Mapping[str, ParamValue], context: Context) -> NodeCheck | None:
    names = strings(params, "sysctls")
    if not names:
        return None

    def match(state: agent_pb2.NodeState) -> list[Hit]:
        return [
            Hit(name, f"forwards IP packets ({name}={value})")
            for name in names
            if (value := sysctl_int(state, name))
        ]

    return match


@node_check("node.promiscuous_interface")
def _promiscuous_interface(params: Mapping[str, ParamValue], context: Context) -> NodeCheck:
    ignored = globs(strings(params, "ignore_interfaces"))

    def match(state: agent_pb2.NodeState) -> list[Hit]:
        return [
            Hit(i.name, f"has interface {i.name} in promiscuous mode")
            for i in state.interfaces
            if i.promiscuous and (ignored is None or not ignored(i.name))
        ]

    return match


def _minimum(name: str, what: str, params: Mapping[str, ParamValue]) -> NodeCheck:
    minimum = integer(params, "minimum")

    def match(state: agent_pb2.NodeState) -> list[Hit]:
        value = sysctl_int(state, name)
        if value is None or value >= minimum:
            return []
        return [Hit(name, f"has {what} ({name}={value}, expected at least {minimum})")]

    return match


@node_check("node.aslr_disabled")
def _aslr_disabled(params: Mapping[str, ParamValue], context: Context) -> NodeCheck:
    return _minimum("kernel.randomize_va_space", "address space randomisation weakened", params)


@node_check("node.ptrace_scope_permissive")
def _ptrace_scope_permissive(params: Mapping[str, ParamValue], context: Context) -> NodeCheck:
    return _minimum("kernel.yama.ptrace_scope", "a permissive ptrace scope", params)


_COMPARE: Mapping[str, Callable[[int, int], bool]] = {"=": operator.eq, ">=": operator.ge, "<=": operator.le}


@node_check("node.kernel_hardening")
def _kernel_hardening(params: Mapping[str, ParamValue], context: Context) -> NodeCheck | None:
    expectations: list[tuple[str, str, int]] = []
    for text in strings(params, "expected"):
        parsed = SYSCTL_EXPECTATION.fullmatch(text)
        assert parsed is not None  # validated
        expectations.append((parsed[1], parsed[2], int(parsed[3])))
    if not expectations:
        return None

    def match(state: agent_pb2.NodeState) -> list[Hit]:
        hits: list[Hit] = []
        for name, op, expected in expectations:
            value = sysctl_int(state, name)
            if value is not None and not _COMPARE[op](value, expected):
                hits.append(Hit(name, f"has kernel setting {name}={value} (expected {op}{expected})"))
        return hits

    return match


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


@node_check("node.public_listener")
def _public_listener(params: Mapping[str, ParamValue], context: Context) -> NodeCheck:
    ignored_ports = frozenset(ints(params, "ignore_ports"))
    internal = AddressRanges(strings(params, "internal_networks")).contains

    def public(address: str) -> bool:
        return is_public(address) and not internal(address)

    def match(state: agent_pb2.NodeState) -> list[Hit]:
        own = [a.partition("/")[0] for i in state.interfaces if i.up for a in i.addresses]
        public_v4 = next((a for a in own if ":" not in a and public(a)), None)
        public_v6 = next((a for a in own if ":" in a and public(a)), None)
        hits: dict[str, Hit] = {}
        for listener in state.listening:
            address = listener.address
            text = address.address
            if address.port in ignored_ports or address.family not in INET:
                continue
            if text == "0.0.0.0":
                exposed = public_v4
            elif text == "::":
                exposed = public_v6 or public_v4  # a dual-stack wildcard also takes IPv4
            else:
                exposed = text if public(text) else None
            if exposed is None:
                continue
            subject = f"{listener.protocol or 'tcp'}/{_host(text)}:{address.port}"
            owner = f" by {listener.exe}" if listener.exe else ""
            hits.setdefault(
                subject,
                Hit(
                    subject,
                    f"listens on public address {exposed} ({subject}{owner})",
                    destination=exposed,
                    binary=listener.exe,
                ),
            )
        return list(hits.values())

    return match
