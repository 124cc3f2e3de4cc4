"""`telltale pki …`: create the CA and issue controller, node and API client certificates."""

from __future__ import annotations

import argparse
from pathlib import Path

from telltale import pki
from telltale.cli.client import CliError


def init(args: argparse.Namespace) -> int:
    """Create the CA in --dir."""
    try:
        written = pki.init_ca(Path(args.dir), days=args.days, force=args.force)
    except pki.PkiError as exc:
        raise CliError(str(exc), code=2) from None
    print(f"wrote {written.cert} (the CA certificate: give it to controllers, agents and clients)")
    print(f"wrote {written.key} (the CA key, mode 0600: keep it offline, it can issue any identity)")
    return 0


def issue(args: argparse.Namespace) -> int:
    """Issue one certificate with the CA in --dir."""
    try:
        written = pki.issue(
            Path(args.dir),
            args.kind,
            args.name,
            dns=args.dns,
            ips=args.ip,
            days=args.days,
            force=args.force,
        )
    except pki.PkiError as exc:
        raise CliError(str(exc), code=2) from None
    identity = pki.identity_uri(args.kind, args.name)
    print(f"wrote {written.cert} ({args.kind} certificate, identity {identity})")
    print(f"wrote {written.key} (its private key, mode 0600)")
    return 0


KIND_HELP = {
    "controller": "a controller's server certificate (serverAuth and clientAuth; --dns/--ip names)",
    "node": "a node agent's client certificate; its identity is the node id",
    "client": "an API client certificate (optional mutual TLS; roles still come from tokens)",
}


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `telltale pki …`."""
    p = sub.add_parser("pki", help="create the CA and issue certificates (mutual TLS)")
    actions = p.add_subparsers(dest="pki_command", metavar="ACTION", required=True)
    q = actions.add_parser("init", help="create the CA (EC P-256, self-signed) in --dir")
    q.add_argument("--dir", required=True, help="directory of the CA and the certificates it issues")
    q.add_argument("--days", type=int, default=pki.CA_DAYS, help="validity in days (default %(default)s)")
    q.add_argument("--force", action="store_true", help="replace an existing CA (orphans its certificates)")
    q.set_defaults(func=init)
    q = actions.add_parser("issue", help="issue a certificate signed by the CA in --dir")
    kinds = q.add_subparsers(dest="kind", metavar="KIND", required=True)
    for kind, help_text in KIND_HELP.items():
        k = kinds.add_parser(kind, help=help_text, description=help_text)
        k.add_argument("--dir", required=True, help="directory of the CA; the files are written there")
        what = "node id" if kind == "node" else f"{kind} name"
        k.add_argument("--name", required=True, help=f"the {what} (letters, digits, '.', '_', '-')")
        if kind == "controller":
            k.add_argument(
                "--dns", action="append", default=[], metavar="NAME", help="DNS name of the controller"
            )
            k.add_argument(
                "--ip", action="append", default=[], metavar="ADDRESS", help="IP address of the controller"
            )
        else:
            k.set_defaults(dns=[], ip=[])
        k.add_argument(
            "--days", type=int, default=pki.LEAF_DAYS, help="validity in days (default %(default)s)"
        )
        k.add_argument("--force", action="store_true", help="replace existing files of that name")
        k.set_defaults(func=issue)
