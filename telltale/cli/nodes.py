"""`telltale nodes …`: the hosts running an agent, their sync state, losses and enforcement."""

from __future__ import annotations

import argparse

from telltale.cli.client import add_api_options, api_channel, every_page
from telltale.cli.format import clean, labelled, table, to_json, when
from telltale.v1 import common_pb2, inventory_pb2, inventory_pb2_grpc

_LIVENESS: dict[int, str] = {
    inventory_pb2.NODE_LIVENESS_ONLINE: "online",
    inventory_pb2.NODE_LIVENESS_OFFLINE: "offline",
}
_ENFORCEMENT: dict[int, str] = {
    common_pb2.ENFORCEMENT_MODE_OFF: "off",
    common_pb2.ENFORCEMENT_MODE_UNAVAILABLE: "unavailable",
    common_pb2.ENFORCEMENT_MODE_FAILED: "FAILED",
}


def _liveness(value: int) -> str:
    return _LIVENESS.get(value, "unknown")


def enforcement_text(state: common_pb2.EnforcementState) -> str:
    """One short phrase: "12 networks (rev 40)", "off", "unavailable", "FAILED"."""
    if state.mode == common_pb2.ENFORCEMENT_MODE_ACTIVE:
        return f"{state.blocked_networks} networks (rev {state.policy_revision})"
    return _ENFORCEMENT.get(state.mode, "-")


def _losses(node: inventory_pb2.Node) -> str:
    parts = [
        (node.dropped_records, "records dropped"),
        (node.dropped_batches, "batches dropped"),
        (node.malformed_records, "malformed"),
        (node.sequence_gaps, "gaps"),
    ]
    return ", ".join(f"{n} {what}" for n, what in parts if n) or "none"


def list_nodes(args: argparse.Namespace) -> int:
    """Print every node (all pages)."""
    with api_channel(args.controller, plaintext=args.plaintext) as channel:
        stub = inventory_pb2_grpc.InventoryServiceStub(channel)
        pages = every_page(stub.ListNodes, inventory_pb2.ListNodesRequest(), timeout=args.timeout)
    nodes = [node for page in pages for node in page.nodes]
    if args.output == "json":
        for node in nodes:
            print(to_json(node))
        return 0
    rows = [
        [
            clean(n.node_id),
            clean(n.hostname),
            _liveness(n.liveness),
            f"{n.applied_policy_revision}" + ("" if n.in_sync else " (behind)"),
            str(n.spooled_batches),
            _losses(n),
            clean(enforcement_text(n.enforcement)),
            when(n.last_seen),
        ]
        for n in nodes
    ]
    headers = ("NODE", "HOST", "STATE", "POLICY REV", "SPOOLED", "LOSSES", "ENFORCING", "LAST SEEN")
    print(table(headers, rows))
    return 0


def show_node(args: argparse.Namespace) -> int:
    """Print one node in full."""
    with api_channel(args.controller, plaintext=args.plaintext) as channel:
        response = inventory_pb2_grpc.InventoryServiceStub(channel).GetNode(
            inventory_pb2.GetNodeRequest(node_id=args.node_id), timeout=args.timeout
        )
    n = response.node
    if args.output == "json":
        print(to_json(n))
        return 0
    lines = [
        ("node", n.node_id),
        ("host", f"{n.hostname} ({n.os}, kernel {n.kernel})"),
        ("agent", f"{n.agent_version}, instance {n.instance_id}"),
        ("state", f"{_liveness(n.liveness)} via {n.controller_id or '-'}, last seen {when(n.last_seen)}"),
        ("policy", f"revision {n.applied_policy_revision}, " + ("in sync" if n.in_sync else "behind")),
        ("batches", f"last recorded {n.last_seq}, {n.spooled_batches} spooled at the agent"),
        ("losses", _losses(n)),
        ("enforcing", enforcement_text(n.enforcement)),
    ]
    if n.enforcement.detail:
        lines.append(("", n.enforcement.detail))
    lines.extend(("coverage gap", gap) for gap in n.coverage_gaps)
    if n.addresses:
        lines.append(("addresses", ", ".join(n.addresses)))
    print(labelled(lines))
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `telltale nodes …`."""
    p = sub.add_parser("nodes", help="the hosts running an agent: sync state, losses, enforcement")
    actions = p.add_subparsers(dest="nodes_command", metavar="ACTION", required=True)
    q = actions.add_parser("list", help="list nodes")
    q.add_argument("-o", "--output", choices=["table", "json"], default="table")
    add_api_options(q)
    q.set_defaults(func=list_nodes)
    q = actions.add_parser("show", help="show one node in full")
    q.add_argument("node_id", help="node id, as `telltale nodes list` shows it")
    q.add_argument("-o", "--output", choices=["text", "json"], default="text")
    add_api_options(q)
    q.set_defaults(func=show_node)
