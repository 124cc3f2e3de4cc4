"""`telltale policy …`: list, show and apply Alert Policies."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc

from telltale.cli.client import CliError, api_channel
from telltale.cli.format import table, to_json, when
from telltale.v1 import policy_pb2, policy_pb2_grpc


def list_policies(args: argparse.Namespace) -> int:
    """Print the policies, marking the default."""
    with api_channel(args.controller, plaintext=args.plaintext) as channel:
        response = policy_pb2_grpc.PolicyServiceStub(channel).ListPolicies(
            policy_pb2.ListPoliciesRequest(), timeout=args.timeout
        )
    if args.output == "json":
        for p in response.policies:
            print(to_json(p))
        return 0
    rows = [
        [
            p.name + (" (default)" if p.name == response.default_policy else ""),
            "built-in" if p.builtin else "custom",
            str(p.revision),
            str(sum(1 for r in p.rules if r.enabled)),
            when(p.updated_at),
            p.description,
        ]
        for p in response.policies
    ]
    print(table(("NAME", "KIND", "REVISION", "RULES ON", "UPDATED", "DESCRIPTION"), rows))
    return 0


def show_policy(args: argparse.Namespace) -> int:
    """Print one policy as its YAML document (or JSON)."""
    with api_channel(args.controller, plaintext=args.plaintext) as channel:
        response = policy_pb2_grpc.PolicyServiceStub(channel).GetPolicy(
            policy_pb2.GetPolicyRequest(name=args.name), timeout=args.timeout
        )
    if args.output == "json":
        print(to_json(response.policy))
    else:
        print(
            f"# revision {response.policy.revision}"
            + (", built-in (read-only)" if response.policy.builtin else "")
        )
        sys.stdout.write(response.document)
    return 0


def apply_policy(args: argparse.Namespace) -> int:
    """Create or update the policy in a YAML file; unchanged policies are left alone."""
    path = Path(args.file)
    try:
        document = path.read_text()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    with api_channel(args.controller, plaintext=args.plaintext) as channel:
        stub = policy_pb2_grpc.PolicyServiceStub(channel)
        violations = stub.ValidatePolicy(
            policy_pb2.ValidatePolicyRequest(document=document), timeout=args.timeout
        ).violations
        if violations:
            lines = "\n".join(f"  {v.field}: {v.description}" for v in violations)
            raise CliError(f"{path} is not a valid policy; nothing was changed:\n{lines}")
        try:
            created = stub.CreatePolicy(
                policy_pb2.CreatePolicyRequest(document=document), timeout=args.timeout
            )
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
        else:
            print(f"policy {created.policy.name!r} created (revision {created.policy.revision})")
            return 0
        name = _document_name(document)
        current = stub.GetPolicy(policy_pb2.GetPolicyRequest(name=name), timeout=args.timeout)
        if _normalised(current.document) == _normalised(_render(document)):
            print(f"policy {name!r} unchanged (revision {current.policy.revision})")
            return 0
        updated = stub.UpdatePolicy(
            policy_pb2.UpdatePolicyRequest(document=document, expected_revision=current.policy.revision),
            timeout=args.timeout,
        )
        print(f"policy {name!r} updated to revision {updated.policy.revision}")
    return 0


def _document_name(document: str) -> str:
    import yaml

    data = yaml.safe_load(document)
    return str(data["metadata"]["name"])


def _render(document: str) -> str:
    """The document in canonical form (the engine's rendering, which the controller also uses)."""
    from telltale.engine import policy as policy_model

    return policy_model.to_document(policy_model.parse_document(document))


def _normalised(document: str) -> str:
    return "\n".join(line.rstrip() for line in document.strip().splitlines())
