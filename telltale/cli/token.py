"""`telltale token …`: create, list and revoke API tokens (admin role)."""

from __future__ import annotations

import argparse
import re
import sys

from google.protobuf.duration_pb2 import Duration

from telltale.cli.client import CliError, add_api_options, api_channel, every_page
from telltale.cli.format import table, to_json, when
from telltale.v1 import token_pb2, token_pb2_grpc

ROLES = ("viewer", "operator", "admin")
_DURATION = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> int:
    """Seconds in "90s", "15m", "12h", "30d", "2w" (or a sum, "1d12h"); ValueError otherwise."""
    text = text.strip().lower()
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"expected a duration such as 12h, 30d or 1d12h, got {text!r}")
    return sum(int(n) * _UNITS[u] for n, u in parts)


def _role(value: int) -> str:
    return token_pb2.Role.Name(token_pb2.Role.ValueType(value)).removeprefix("ROLE_").lower()


def create(args: argparse.Namespace) -> int:
    """Create a token; print it once on stdout (and what it is on stderr)."""
    request = token_pb2.CreateTokenRequest(
        role=token_pb2.Role.Value(f"ROLE_{args.role.upper()}"), name=args.name, description=args.description
    )
    if args.expires_in:
        try:
            request.expires_in.CopyFrom(Duration(seconds=parse_duration(args.expires_in)))
        except ValueError as exc:
            raise CliError(f"--expires-in: {exc}", code=2) from None
    with api_channel(args.controller, plaintext=args.plaintext) as channel:
        response = token_pb2_grpc.TokenServiceStub(channel).CreateToken(request, timeout=args.timeout)
    token = response.token
    expires = when(token.expires_at) if token.HasField("expires_at") else "never"
    print(
        f"created token {token.id} ({_role(token.role)}, {token.name!r}, expires {expires}); "
        "it is shown once, store it now:",
        file=sys.stderr,
    )
    print(response.bearer_token, flush=True)
    return 0


def list_tokens(args: argparse.Namespace) -> int:
    """Print every token (never a secret)."""
    with api_channel(args.controller, plaintext=args.plaintext) as channel:
        stub = token_pb2_grpc.TokenServiceStub(channel)
        pages = every_page(stub.ListTokens, token_pb2.ListTokensRequest(), timeout=args.timeout)
    tokens = [t for page in pages for t in page.tokens]
    if args.output == "json":
        for t in tokens:
            print(to_json(t))
        return 0
    rows = [
        [
            t.id,
            t.name,
            _role(t.role),
            t.creator,
            when(t.created_at),
            when(t.expires_at) if t.HasField("expires_at") else "never",
        ]
        for t in tokens
    ]
    print(table(("ID", "NAME", "ROLE", "CREATOR", "CREATED", "EXPIRES"), rows))
    return 0


def revoke(args: argparse.Namespace) -> int:
    """Revoke a token by id."""
    with api_channel(args.controller, plaintext=args.plaintext) as channel:
        response = token_pb2_grpc.TokenServiceStub(channel).RevokeToken(
            token_pb2.RevokeTokenRequest(id=args.id), timeout=args.timeout
        )
    print(f"revoked token {response.token.id} ({_role(response.token.role)}, {response.token.name!r})")
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `telltale token …`."""
    p = sub.add_parser("token", help="API bearer tokens: create, list, revoke (admin)")
    actions = p.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    q = actions.add_parser("create", help="create a token and print it once")
    q.add_argument("--role", required=True, choices=ROLES, help="what the token allows")
    q.add_argument("--name", required=True, help="a label, e.g. ops or console")
    q.add_argument("--description", default="", help="what the token is for")
    q.add_argument("--expires-in", metavar="DURATION", help="e.g. 12h, 30d, 1d12h (default: never)")
    add_api_options(q)
    q.set_defaults(func=create)
    q = actions.add_parser("list", help="list tokens (ids, names, roles; never secrets)")
    q.add_argument("-o", "--output", choices=["table", "json"], default="table")
    add_api_options(q)
    q.set_defaults(func=list_tokens)
    q = actions.add_parser("revoke", help="revoke a token: every controller refuses it within a second")
    q.add_argument("id", help="the token id (from `telltale token list`)")
    add_api_options(q)
    q.set_defaults(func=revoke)
