"""The node's stable identity and what it says about itself when it registers."""

from __future__ import annotations

import ipaddress
import os
import platform
import secrets
import socket
import uuid
from collections.abc import Sequence
from pathlib import Path

import telltale
from telltale.v1 import agent_pb2, common_pb2

BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")


def node_id(state_dir: Path) -> str:
    """The node id stored in `state_dir/node-id`, created (random, persisted) on first use."""
    path = state_dir / "node-id"
    try:
        existing = path.read_text().strip()
    except FileNotFoundError:
        existing = ""
    if existing:
        return existing
    state_dir.mkdir(parents=True, exist_ok=True)
    new_id = f"{socket.gethostname()}-{uuid.uuid4().hex[:12]}"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(new_id + "\n")
    os.replace(tmp, path)
    return new_id


def _os_name() -> str:
    try:
        info = platform.freedesktop_os_release()
        return info.get("PRETTY_NAME") or info.get("NAME", "Linux")
    except OSError:
        return platform.system()


def instance_id() -> str:
    """A new random id for one agent instance (32 hex digits)."""
    return secrets.token_hex(16)


def boot_id(path: Path = BOOT_ID_PATH) -> str:
    """The kernel's boot id, or "" when it cannot be read."""
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return ""


def hello(
    node: str,
    *,
    last_acked_seq: int,
    applied_revision: int,
    instance: str = "",
    boot: str = "",
    enforcement: common_pb2.EnforcementState | None = None,
    addresses: Sequence[str] = (),
) -> agent_pb2.Hello:
    """The Hello this node sends at the start of each stream.

    `instance` is the agent instance's id (see `instance_id`), `boot` the kernel's boot id,
    `enforcement` what the agent's firewall enforces now, `addresses` the node's IP addresses
    (see `node_addresses`).
    """
    return agent_pb2.Hello(
        node_id=node,
        hostname=socket.gethostname(),
        kernel=platform.release(),
        os=_os_name(),
        agent_version=telltale.__version__,
        last_acked_seq=last_acked_seq,
        applied_policy_revision=applied_revision,
        instance_id=instance,
        boot_id=boot,
        enforcement=enforcement,
        addresses=addresses,
    )


MAX_HELLO_ADDRESSES = 64


def node_addresses(state: agent_pb2.NodeState | None) -> list[str]:
    """The addresses by which other hosts may know this node, from a host-state snapshot: every
    interface address that is neither loopback nor link-local, without its prefix length, in
    order and without repeats, at most MAX_HELLO_ADDRESSES. Empty without a snapshot."""
    found: dict[str, None] = {}
    for interface in state.interfaces if state is not None else ():
        for cidr in interface.addresses:
            try:
                address = ipaddress.ip_interface(cidr).ip
            except ValueError:
                continue
            if address.is_loopback or address.is_link_local:
                continue
            found.setdefault(str(address))
    return list(found)[:MAX_HELLO_ADDRESSES]
