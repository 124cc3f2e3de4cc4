"""`telltale workloads …`: the workloads started under the shim, and what the shim could not observe."""

from __future__ import annotations

import argparse

from telltale.cli.client import CliError, add_api_options, api_channel, every_page
from telltale.cli.format import clean, labelled, table, to_json, when
from telltale.v1 import common_pb2, inventory_pb2, inventory_pb2_grpc


def _workloads(
    args: argparse.Namespace, request: inventory_pb2.ListWorkloadsRequest
) -> list[common_pb2.Workload]:
    with api_channel(args.controller, plaintext=args.plaintext) as channel:
        stub = inventory_pb2_grpc.InventoryServiceStub(channel)
        pages = every_page(stub.ListWorkloads, request, timeout=args.timeout)
    return [workload for page in pages for workload in page.workloads]


def _name(w: common_pb2.Workload) -> str:
    return f"{w.application}/{w.component}" if w.component else w.application


def list_workloads(args: argparse.Namespace) -> int:
    """Print every workload (all pages), optionally of one application or node."""
    request = inventory_pb2.ListWorkloadsRequest(application=args.app, node_id=args.node)
    workloads = sorted(_workloads(args, request), key=lambda w: (w.started_at.ToNanoseconds(), w.id))
    if args.output == "json":
        for workload in workloads:
            print(to_json(workload))
        return 0
    rows = [
        [
            clean(w.id),
            clean(_name(w)),
            clean(w.version or "-"),
            clean(w.node_id),
            when(w.started_at),
            str(len(w.coverage_gaps)) if w.coverage_gaps else "none",
        ]
        for w in workloads
    ]
    print(table(("WORKLOAD", "APPLICATION", "VERSION", "NODE", "STARTED", "COVERAGE GAPS"), rows))
    return 0


def show_workload(args: argparse.Namespace) -> int:
    """Print one workload in full, with each coverage gap; exits 1 when there is no such workload."""
    found = [w for w in _workloads(args, inventory_pb2.ListWorkloadsRequest()) if w.id == args.workload_id]
    if not found:
        raise CliError(f"no workload {args.workload_id!r}", code=1)
    w = found[0]
    if args.output == "json":
        print(to_json(w))
        return 0
    lines = [
        ("workload", w.id),
        ("application", _name(w) + (f" {w.version}" if w.version else "")),
        ("environment", w.environment or "-"),
        ("node", w.node_id),
        ("started", when(w.started_at)),
        ("command", " ".join(w.command)),
    ]
    if w.policy_override:
        lines.append(("policy", w.policy_override))
    lines.extend(("tag", f"{key}={value}") for key, value in sorted(w.tags.items()))
    lines.extend(("coverage gap", gap) for gap in w.coverage_gaps)
    if not w.coverage_gaps:
        lines.append(("coverage gap", "none"))
    print(labelled(lines))
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `telltale workloads …`."""
    p = sub.add_parser("workloads", help="the workloads started under the shim, and their coverage gaps")
    actions = p.add_subparsers(dest="workloads_command", metavar="ACTION", required=True)
    q = actions.add_parser("list", help="list workloads")
    q.add_argument("--app", default="", help="only this application's workloads")
    q.add_argument("--node", default="", help="only the workloads of this node")
    q.add_argument("-o", "--output", choices=["table", "json"], default="table")
    add_api_options(q)
    q.set_defaults(func=list_workloads)
    q = actions.add_parser(
        "show", help="show one workload in full, with the programs the shim could not observe"
    )
    q.add_argument("workload_id", help="workload id, as `telltale workloads list` shows it")
    q.add_argument("-o", "--output", choices=["text", "json"], default="text")
    add_api_options(q)
    q.set_defaults(func=show_workload)
