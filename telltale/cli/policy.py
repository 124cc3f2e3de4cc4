"""`telltale policy …`: list, show, clone, delete, assign, trace and test Alert Policies.

Documents (apply, diff, export) are in `gitops.py`.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from pathlib import Path

import grpc

from telltale.cli import gitops
from telltale.cli.client import CliError, add_api_options, api_channel, every_page
from telltale.cli.format import priority, table, to_json, when
from telltale.v1 import inventory_pb2, inventory_pb2_grpc, policy_pb2, policy_pb2_grpc


def _stub(channel: grpc.Channel) -> policy_pb2_grpc.PolicyServiceStub:
    return policy_pb2_grpc.PolicyServiceStub(channel)


def list_policies(args: argparse.Namespace) -> int:
    """Print the policies, marking the default."""
    with api_channel(args.controller, plaintext=args.plaintext) as channel:
        policies, default = gitops.all_policies(_stub(channel), args.timeout)
    if args.output == "json":
        for p in policies:
            print(to_json(p, default=p.name == default))
        return 0
    rows = [
        [
            p.name + (" (default)" if p.name == default else ""),
            "built-in" if p.builtin else f"custom{f' (from {p.cloned_from})' if p.cloned_from else ''}",
            str(p.revision),
            str(sum(1 for r in p.rules if r.enabled)),
            when(p.updated_at),
            p.description,
        ]
        for p in policies
    ]
    print(table(("NAME", "KIND", "REVISION", "RULES ON", "UPDATED", "DESCRIPTION"), rows))
    return 0


def show_policy(args: argparse.Namespace) -> int:
    """Print one policy (at its current or a past revision) as its YAML document, or JSON."""
    with api_channel(args.controller, plaintext=args.plaintext) as channel:
        response = _stub(channel).GetPolicy(
            policy_pb2.GetPolicyRequest(name=args.name, revision=args.revision), timeout=args.timeout
        )
    if args.output == "json":
        print(to_json(response.policy))
        return 0
    policy = response.policy
    print(f"# revision {policy.revision}" + (", built-in (read-only)" if policy.builtin else ""))
    sys.stdout.write(response.document)
    return 0


def clone_policy(args: argparse.Namespace) -> int:
    """Copy a policy (built-ins included) under a new name, to edit it."""
    with api_channel(args.controller, plaintext=args.plaintext) as channel:
        clone = (
            _stub(channel)
            .ClonePolicy(
                policy_pb2.ClonePolicyRequest(source=args.source, name=args.name), timeout=args.timeout
            )
            .policy
        )
    print(f"policy {clone.name!r} created from {args.source!r} (revision {clone.revision})")
    print(
        f"edit it with: telltale policy export {clone.name!r} > policy.yaml; then policy apply -f policy.yaml"
    )
    return 0


def delete_policy(args: argparse.Namespace) -> int:
    """Delete a custom policy that is neither the default nor assigned."""
    with api_channel(args.controller, plaintext=args.plaintext) as channel:
        _stub(channel).DeletePolicy(policy_pb2.DeletePolicyRequest(name=args.name), timeout=args.timeout)
    print(f"policy {args.name!r} deleted (its revision history is kept)")
    return 0


def set_default(args: argparse.Namespace) -> int:
    """Make a policy the default for applications without an assignment."""
    with api_channel(args.controller, plaintext=args.plaintext) as channel:
        response = _stub(channel).SetDefaultPolicy(
            policy_pb2.SetDefaultPolicyRequest(name=args.name), timeout=args.timeout
        )
    print(f"default policy is now {args.name!r} (was {response.previous!r})")
    return 0


def assign_policy(args: argparse.Namespace) -> int:
    """Assign a policy to an application or one of its components."""
    assignment = policy_pb2.PolicyAssignment(application=args.app, component=args.component, policy=args.name)
    with api_channel(args.controller, plaintext=args.plaintext) as channel:
        response = _stub(channel).AssignPolicy(
            policy_pb2.AssignPolicyRequest(assignment=assignment), timeout=args.timeout
        )
    target = args.app + (f"/{args.component}" if args.component else "")
    was = f" (was {response.previous_policy!r})" if response.previous_policy else ""
    print(f"{target} now uses policy {args.name!r}{was}")
    return 0


def unassign_policy(args: argparse.Namespace) -> int:
    """Remove an application's (or component's) assignment: it falls back to the default."""
    with api_channel(args.controller, plaintext=args.plaintext) as channel:
        response = _stub(channel).UnassignPolicy(
            policy_pb2.UnassignPolicyRequest(application=args.app, component=args.component),
            timeout=args.timeout,
        )
    target = args.app + (f"/{args.component}" if args.component else "")
    print(f"{target}: assignment removed" if response.removed else f"{target} had no assignment")
    return 0


def policy_usage(args: argparse.Namespace) -> int:
    """Show which applications and components use a policy (assigned, or through the default)."""
    with api_channel(args.controller, plaintext=args.plaintext) as channel:
        stub = _stub(channel)
        pages = every_page(
            stub.ListAssignments, policy_pb2.ListAssignmentsRequest(policy=args.name), timeout=args.timeout
        )
        assignments = [a for page in pages for a in page.assignments]
        _, default = gitops.all_policies(stub, args.timeout)
        apps = (
            inventory_pb2_grpc.InventoryServiceStub(channel)
            .ListApplications(inventory_pb2.ListApplicationsRequest(), timeout=args.timeout)
            .applications
        )
    rows = [[a.application, a.component or "(all)", "assigned"] for a in assignments]
    assigned_apps = {a.application for a in assignments}
    rows += [
        [app.name, "(all)", "default"]
        for app in apps
        if app.policy == args.name and app.name not in assigned_apps
    ]
    if args.name == default:
        print(f"{args.name!r} is the default policy: every application without an assignment uses it")
    if rows:
        print(table(("APPLICATION", "COMPONENT", "HOW"), rows))
    elif args.name != default:
        print(f"no application uses {args.name!r}")
    return 0


def policy_history(args: argparse.Namespace) -> int:
    """List a policy's revisions, newest first."""
    with api_channel(args.controller, plaintext=args.plaintext) as channel:
        stub = _stub(channel)
        pages = every_page(
            stub.ListPolicyRevisions,
            policy_pb2.ListPolicyRevisionsRequest(name=args.name),
            timeout=args.timeout,
        )
    revisions = [r for page in pages for r in page.revisions]
    print(
        table(
            ("REVISION", "UPDATED", "BY"),
            [[str(r.revision), when(r.updated_at), r.updated_by] for r in revisions],
        )
    )
    return 0


def diff_revisions(args: argparse.Namespace) -> int:
    """Show what changed in a policy between two revisions (default: the last change).

    Exits 1 when the revisions differ, like diff(1).
    """
    with api_channel(args.controller, plaintext=args.plaintext) as channel:
        stub = _stub(channel)
        to_rev = args.to_revision  # a deleted policy's history is still served: name both revisions
        if not to_rev:
            to_rev = stub.GetPolicy(
                policy_pb2.GetPolicyRequest(name=args.name), timeout=args.timeout
            ).policy.revision
        from_rev = args.from_revision or max(to_rev - 1, 1)
        old = stub.GetPolicy(
            policy_pb2.GetPolicyRequest(name=args.name, revision=from_rev), timeout=args.timeout
        )
        new = stub.GetPolicy(
            policy_pb2.GetPolicyRequest(name=args.name, revision=to_rev), timeout=args.timeout
        )
    lines = list(
        difflib.unified_diff(
            gitops.canonical(old.document).splitlines(keepends=True),
            gitops.canonical(new.document).splitlines(keepends=True),
            fromfile=f"{args.name}@{from_rev}",
            tofile=f"{args.name}@{to_rev}",
        )
    )
    sys.stdout.writelines(lines)
    return 1 if lines else 0


def diff_command(args: argparse.Namespace) -> int:
    """`policy diff NAME` compares revisions; `policy diff -f PATH` compares documents with the controller."""
    if args.file:
        return gitops.diff_files(args)
    if not args.name:
        raise CliError("policy diff: name a policy, or give -f FILE|DIR", code=2)
    return diff_revisions(args)


_DURATION = re.compile(r"(\d+)([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_seconds(text: str) -> int:
    """Seconds in a duration like 90s, 15m, 1h or 2d; argparse.ArgumentTypeError otherwise."""
    match = _DURATION.fullmatch(text.strip())
    if match is None or int(match[1]) == 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: use a positive whole number and s, m, h or d (90s, 15m, 1h, 2d)"
        )
    return int(match[1]) * _UNIT_S[match[2]]


def _finding_rows(findings: list[policy_pb2.PolicyTestFinding]) -> list[list[str]]:
    return [
        [
            priority(f.priority),
            f.alert_type,
            f.application + (f"/{f.component}" if f.component else ""),
            f.subject,
            str(f.occurrences),
        ]
        for f in findings
    ]


def dry_run_candidate(args: argparse.Namespace) -> int:
    """Judge recent events by a candidate policy and show the alerts it would add and remove.

    The controller answers from the events it received itself recently; nothing is changed.
    """
    try:
        document = Path(args.file).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read {args.file}: {exc}") from None
    request = policy_pb2.TestPolicyRequest(document=document, since_seconds=args.since, applications=args.app)
    with api_channel(args.controller, plaintext=args.plaintext) as channel:
        response = _stub(channel).TestPolicy(request, timeout=args.timeout)
    if args.output == "json":
        print(to_json(response))
        return 0
    headers = ("PRI", "TYPE", "APPLICATION", "SUBJECT", "COUNT")
    for title, findings in (("would add", response.added), ("would remove", response.removed)):
        print(f"{title}:")
        print(table(headers, _finding_rows(list(findings))) if findings else "  nothing")
        print()
    window = f"since {when(response.window_start)}" if args.since else "everything held"
    held = (
        f"this controller holds events received since {when(response.retained_since)}"
        if response.HasField("retained_since")
        else "this controller holds no events yet"
    )
    print(
        f"{response.events_considered} events considered ({window}; {held}); "
        f"{len(response.added)} would be added, {len(response.removed)} removed, "
        f"{response.changed} change priority; nothing was changed"
    )
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `telltale policy …`."""
    p = sub.add_parser("policy", help="manage Alert Policies (list, show, clone, assign, apply, …)")
    actions = p.add_subparsers(dest="policy_command", metavar="ACTION", required=True)

    def action(
        name: str, help_text: str, func: object, *, output: tuple[str, ...] = ()
    ) -> argparse.ArgumentParser:
        q = actions.add_parser(name, help=help_text, description=help_text)
        if output:
            q.add_argument("-o", "--output", choices=output, default=output[0], help="output format")
        add_api_options(q)
        q.set_defaults(func=func)
        return q

    action("list", "list policies", list_policies, output=("table", "json"))
    q = action("show", "show a policy as its YAML document", show_policy, output=("yaml", "json"))
    q.add_argument("name", help="policy name, e.g. Standard")
    q.add_argument("--revision", type=int, default=0, help="a past revision (default: the current one)")
    q = action("clone", "copy a policy under a new name, to edit it", clone_policy)
    q.add_argument("source", help="policy to copy, e.g. Standard")
    q.add_argument("name", help="name of the new policy")
    q = action("delete", "delete a custom policy (not while default or assigned)", delete_policy)
    q.add_argument("name")
    q = action("default", "make a policy the default for applications without an assignment", set_default)
    q.add_argument("name")
    q = action("assign", "assign a policy to an application or one of its components", assign_policy)
    q.add_argument("name", help="policy name")
    q.add_argument("--app", required=True, help="application")
    q.add_argument("--component", default="", help="only this component of the application")
    q = action(
        "unassign", "remove an assignment (the application falls back to the default)", unassign_policy
    )
    q.add_argument("--app", required=True, help="application")
    q.add_argument("--component", default="", help="only this component's assignment")
    q = action("usage", "show which applications use a policy", policy_usage)
    q.add_argument("name")
    q = action("history", "list a policy's revisions", policy_history)
    q.add_argument("name")
    q = action(
        "diff", "compare two revisions of a policy, or local documents with the controller (-f)", diff_command
    )
    q.add_argument("name", nargs="?", help="policy whose revisions to compare")
    q.add_argument(
        "--from", dest="from_revision", type=int, default=0, help="older revision (default: previous)"
    )
    q.add_argument("--to", dest="to_revision", type=int, default=0, help="newer revision (default: current)")
    q.add_argument("-f", "--file", help="compare this document, or every *.yaml of this directory, instead")
    q = action("apply", "create or update policies from YAML documents (a file or a directory)", gitops.apply)
    q.add_argument("-f", "--file", required=True, help="a policy document, or a directory of them")
    q.add_argument("--dry-run", action="store_true", help="show what would change, change nothing")
    q = action(
        "test",
        "show which alerts a candidate policy would add and remove on recently received events",
        dry_run_candidate,
        output=("table", "json"),
    )
    q.add_argument("-f", "--file", required=True, help="the candidate policy document")
    q.add_argument(
        "--since",
        type=duration_seconds,
        default=0,
        metavar="DURATION",
        help="only events received this long ago or later, e.g. 90s, 15m, 1h, 2d "
        "(default: every event the controller still holds)",
    )
    q.add_argument("--app", action="append", default=[], help="only this application (repeatable)")
    q = action("export", "print policies as YAML documents (or write one file each with -d)", gitops.export)
    q.add_argument("names", nargs="*", help="policies to export (default: every custom policy)")
    q.add_argument("--all", action="store_true", help="include the built-in policies")
    q.add_argument("-d", "--directory", help="write NAME.yaml files into this directory")
