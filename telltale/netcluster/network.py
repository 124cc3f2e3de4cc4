"""The harness's network: a hub namespace holding a bridge, and node namespaces joined to it.

Everything here happens inside namespaces the harness creates; the host's own namespace gets no
interface, address, route or nftables rule. Interface names are fixed (`br0` in the hub, `eth0` in
a node, `v-NODE` for the hub's end of a node's veth pair) because each lives in its own namespace.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence

BRIDGE = "br0"
NODE_LINK = "eth0"
PREFIX_LEN = 24
# The table `cut(how="nft")` adds inside a node namespace (the agent's own is `inet telltale`).
CUT_TABLE = "telltale_cut"


class NetworkError(RuntimeError):
    """An `ip` or `nft` command failed; the message carries its error output."""


def run(*cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run `cmd`, capturing its output; NetworkError naming it on failure when `check`."""
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise NetworkError(f"{' '.join(cmd)}: {done.stderr.strip() or f'exit status {done.returncode}'}")
    return done


def inside(netns: str, cmd: Sequence[str]) -> list[str]:
    """The command line that runs `cmd` inside `netns`."""
    return ["ip", "netns", "exec", netns, *cmd]


def check_prerequisites() -> None:
    """Raise NetworkError saying what is missing: root, iproute2, nft."""
    if os.geteuid() != 0:
        raise NetworkError("the network harness needs root (network namespaces, bridges, nftables)")
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            raise NetworkError(f"the {tool} command is missing: install {package}")


def namespaces() -> set[str]:
    """The names of the network namespaces `ip netns` lists."""
    listed = run("ip", "netns", "list").stdout
    return {line.split()[0] for line in listed.splitlines() if line.strip()}


def add_namespace(name: str) -> None:
    """Create namespace `name` with loopback up."""
    run("ip", "netns", "add", name)
    run("ip", "-n", name, "link", "set", "lo", "up")


def delete_namespace(name: str) -> None:
    """Delete namespace `name` if it exists (its interfaces, and their veth peers, go with it)."""
    if name in namespaces():
        run("ip", "netns", "del", name)


def pids_in(name: str) -> list[int]:
    """The processes living in namespace `name`."""
    done = run("ip", "netns", "pids", name, check=False)
    return [int(p) for p in done.stdout.split() if p.isdigit()]


def make_hub(hub: str, addresses: Sequence[str]) -> None:
    """In `hub`: the bridge, up, holding `addresses` (the first is the bridge's own)."""
    run("ip", "-n", hub, "link", "add", BRIDGE, "type", "bridge")
    for address in addresses:
        run("ip", "-n", hub, "addr", "add", f"{address}/{PREFIX_LEN}", "dev", BRIDGE)
    run("ip", "-n", hub, "link", "set", BRIDGE, "up")


def hub_port(node: str) -> str:
    """The name of the hub's end of `node`'s veth pair (at most 15 characters)."""
    return f"v-{node}"[:15]


def join(hub: str, netns: str, node: str, address: str) -> None:
    """Join node namespace `netns` to the hub's bridge with a veth pair; give it `address`."""
    port = hub_port(node)
    run("ip", "-n", netns, "link", "add", NODE_LINK, "type", "veth", "peer", "name", port, "netns", hub)
    run("ip", "-n", hub, "link", "set", port, "master", BRIDGE)
    run("ip", "-n", hub, "link", "set", port, "up")
    run("ip", "-n", netns, "addr", "add", f"{address}/{PREFIX_LEN}", "dev", NODE_LINK)
    run("ip", "-n", netns, "link", "set", NODE_LINK, "up")


def set_link(netns: str, up: bool) -> None:
    """Bring the node's link up or down."""
    run("ip", "-n", netns, "link", "set", NODE_LINK, "up" if up else "down")


def cut_with_nftables(netns: str, network: str, own: str, *, reject: bool = False) -> None:
    """Inside `netns`: drop every packet to and from `network` except the node's `own` address
    (a table of our own). With `reject`, outgoing TCP is answered with a reset instead, so
    established connections break at their next send and new ones fail at once (a dropped packet
    leaves a TCP connection retransmitting, and it survives a short cut)."""
    tcp = "reject with tcp reset" if reject else "drop"
    # The reset nftables makes for a rejected packet comes back through the input hook, from the
    # peer's address: let resets in.
    resets = f"ip saddr {network} tcp flags & rst == rst accept; " if reject else ""
    rules = (
        f"table inet {CUT_TABLE} {{\n"
        "  chain out { type filter hook output priority -10; "
        f"ip daddr {own} accept; ip daddr {network} meta l4proto tcp {tcp}; ip daddr {network} drop; }}\n"
        "  chain in { type filter hook input priority -10; "
        f"ip saddr {own} accept; {resets}ip saddr {network} drop; }}\n"
        "}\n"
    )
    done = subprocess.run(
        inside(netns, ["nft", "-f", "-"]),
        input=rules,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        raise NetworkError(f"nft in {netns}: {done.stderr.strip()}")


def heal_nftables(netns: str) -> None:
    """Remove the table `cut_with_nftables` added, if present."""
    run(*inside(netns, ["nft", "delete", "table", "inet", CUT_TABLE]), check=False)
