"""Policies as files: `telltale policy apply`, `policy diff -f` and `policy export`.

A directory of documents is the desired state. `apply` validates every document with the
controller first and changes nothing if any is invalid; then it creates what is missing and
updates what differs, naming the revision it edits so that a concurrent change is refused
rather than overwritten. Applying the same files twice changes nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc

from telltale.cli.client import CliError, api_channel
from telltale.engine import policy as policy_model
from telltale.v1 import policy_pb2, policy_pb2_grpc


@dataclass
class Document:
    """One policy document read from a file."""

    source: Path
    text: str
    name: str = ""


def canonical(document: str) -> str:
    """`document` in the engine's canonical rendering, without revision and authorship metadata."""
    try:
        policy = policy_model.parse_document(document)
    except policy_model.PolicyValidationError as exc:
        problems = "; ".join(f"{v.field or '(document)'}: {v.description}" for v in exc.violations)
        raise CliError(f"a policy document this version cannot read: {problems}") from None
    bare = dataclasses.replace(
        policy, builtin=False, revision=0, cloned_from="", updated_by="", updated_at_ns=0
    )
    return policy_model.to_document(bare)


def read_documents(path: Path) -> list[Document]:
    """The document in `path`, or every *.yaml / *.yml in directory `path` (sorted by name)."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
        if not files:
            raise CliError(f"{path}: no *.yaml or *.yml files")
    elif path.exists():
        files = [path]
    else:
        raise CliError(f"{path}: no such file or directory")
    documents = []
    for file in files:
        try:
            documents.append(Document(file, file.read_text()))
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"cannot read {file}: {exc}") from None
    return documents


def all_policies(
    stub: policy_pb2_grpc.PolicyServiceStub, timeout: float
) -> tuple[list[policy_pb2.Policy], str]:
    """Every policy (following pages) and the name of the default."""
    policies: list[policy_pb2.Policy] = []
    request = policy_pb2.ListPoliciesRequest()
    while True:
        response = stub.ListPolicies(request, timeout=timeout)
        policies.extend(response.policies)
        if not response.page.next_page_token:
            return policies, response.default_policy
        request.page.page_token = response.page.next_page_token


def _validate(stub: policy_pb2_grpc.PolicyServiceStub, documents: list[Document], timeout: float) -> None:
    """Fill in each document's name; raise CliError listing every problem of every document."""
    problems = []
    for doc in documents:
        violations = stub.ValidatePolicy(
            policy_pb2.ValidatePolicyRequest(document=doc.text), timeout=timeout
        ).violations
        if violations:
            problems += [f"  {doc.source}: {v.field or '(document)'}: {v.description}" for v in violations]
        else:
            doc.name = policy_model.parse_document(doc.text).name
    seen: dict[str, Path] = {}
    for doc in documents:
        if doc.name and doc.name in seen:
            problems.append(f"  {doc.source}: policy {doc.name!r} is also defined in {seen[doc.name]}")
        seen.setdefault(doc.name, doc.source)
    if problems:
        raise CliError("invalid policy documents; nothing was changed:\n" + "\n".join(problems))


def _current(
    stub: policy_pb2_grpc.PolicyServiceStub, name: str, timeout: float
) -> policy_pb2.GetPolicyResponse | None:
    try:
        return stub.GetPolicy(policy_pb2.GetPolicyRequest(name=name), timeout=timeout)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise


def apply(args: argparse.Namespace) -> int:
    """Create or update the policies of a file or directory; with --dry-run only show the plan."""
    documents = read_documents(Path(args.file))
    changed = 0
    with api_channel(args.controller, plaintext=args.plaintext) as channel:
        stub = policy_pb2_grpc.PolicyServiceStub(channel)
        _validate(stub, documents, args.timeout)
        plan: list[tuple[Document, policy_pb2.GetPolicyResponse | None]] = []
        for doc in documents:
            current = _current(stub, doc.name, args.timeout)
            if current is not None and current.policy.builtin:
                raise CliError(
                    f"{doc.source}: {doc.name!r} is a built-in policy and read-only: give your copy another "
                    "name (telltale policy clone) ; nothing was changed"
                )
            plan.append((doc, current))
        prefix = "would be " if args.dry_run else ""
        for doc, current in plan:
            if current is None:
                if not args.dry_run:
                    created = stub.CreatePolicy(
                        policy_pb2.CreatePolicyRequest(document=doc.text), timeout=args.timeout
                    )
                print(
                    f"policy {doc.name!r} {prefix}created"
                    + ("" if args.dry_run else f" (revision {created.policy.revision})")
                )
                changed += 1
            elif canonical(current.document) == canonical(doc.text):
                print(f"policy {doc.name!r} unchanged (revision {current.policy.revision})")
            else:
                revision = current.policy.revision
                if not args.dry_run:
                    stub.UpdatePolicy(
                        policy_pb2.UpdatePolicyRequest(document=doc.text, expected_revision=revision),
                        timeout=args.timeout,
                    )
                print(f"policy {doc.name!r} {prefix}updated (revision {revision} -> {revision + 1})")
                changed += 1
    if args.dry_run:
        print(f"dry run: {changed} of {len(documents)} policies would change; nothing was changed")
    return 0


def diff_files(args: argparse.Namespace) -> int:
    """Show how local documents differ from the controller's policies; exits 1 when they differ."""
    documents = read_documents(Path(args.file))
    differs = False
    with api_channel(args.controller, plaintext=args.plaintext) as channel:
        stub = policy_pb2_grpc.PolicyServiceStub(channel)
        _validate(stub, documents, args.timeout)
        for doc in documents:
            current = _current(stub, doc.name, args.timeout)
            theirs = canonical(current.document) if current is not None else ""
            lines = list(
                difflib.unified_diff(
                    theirs.splitlines(keepends=True),
                    canonical(doc.text).splitlines(keepends=True),
                    fromfile=f"controller:{doc.name}" if current is not None else "/dev/null",
                    tofile=str(doc.source),
                )
            )
            sys.stdout.writelines(lines)
            differs = differs or bool(lines)
    return 1 if differs else 0


def file_name(policy_name: str) -> str:
    """A file name for a policy: 'Max Alert' -> 'max-alert.yaml'."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", policy_name.lower()).strip("-.")
    return f"{slug or 'policy'}.yaml"


def export(args: argparse.Namespace) -> int:
    """Print policies as documents ready for `apply`, or write one file per policy with -d."""
    with api_channel(args.controller, plaintext=args.plaintext) as channel:
        stub = policy_pb2_grpc.PolicyServiceStub(channel)
        names = list(args.names)
        if not names:
            policies, _ = all_policies(stub, args.timeout)
            names = [p.name for p in policies if args.all or not p.builtin]
        documents = [
            (
                name,
                canonical(
                    stub.GetPolicy(policy_pb2.GetPolicyRequest(name=name), timeout=args.timeout).document
                ),
            )
            for name in names
        ]
    if args.directory:
        targets: dict[str, str] = {}
        for name, _ in documents:
            other = targets.setdefault(file_name(name), name)
            if other != name:
                raise CliError(
                    f"policies {other!r} and {name!r} would both be written to {file_name(name)}; "
                    "export them one at a time to different directories"
                )
        directory = Path(args.directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, text in documents:
            target = directory / file_name(name)
            target.write_text(text)
            print(f"wrote {target}")
    else:
        sys.stdout.write("---\n".join(documents_text for _, documents_text in documents))
    if not documents:
        print("no policies to export (custom policies only; --all adds the built-ins)", file=sys.stderr)
    return 0
