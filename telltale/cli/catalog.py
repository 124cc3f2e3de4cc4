"""`telltale catalog …`: the alert types that policies configure."""

from __future__ import annotations

import argparse
import textwrap

from telltale.cli.client import add_api_options, api_channel, every_page
from telltale.cli.format import priority, table, to_json
from telltale.v1 import catalog_pb2, catalog_pb2_grpc, common_pb2, policy_pb2


def _category(value: int) -> str:
    return common_pb2.Category.Name(common_pb2.Category.ValueType(value)).removeprefix("CATEGORY_").lower()


def list_catalog(args: argparse.Namespace) -> int:
    """Print the alert catalog (every page)."""
    with api_channel(args.controller, plaintext=args.plaintext) as channel:
        stub = catalog_pb2_grpc.CatalogServiceStub(channel)
        pages = every_page(stub.ListAlertTypes, catalog_pb2.ListAlertTypesRequest(), timeout=args.timeout)
    types = [t for page in pages for t in page.alert_types]
    if args.output == "json":
        for t in types:
            print(to_json(t))
        return 0
    rows = [[t.id, _category(t.category), priority(t.default_priority), t.title] for t in types]
    print(table(("ID", "CATEGORY", "DEFAULT", "TITLE"), rows))
    return 0


def _value(value: policy_pb2.ParamValue) -> str:
    which = value.WhichOneof("value")
    if which == "strings":
        return ", ".join(value.strings.values) or "(none)"
    if which == "ints":
        return ", ".join(str(v) for v in value.ints.values) or "(none)"
    return str(getattr(value, which)) if which else "-"


def show_alert_type(args: argparse.Namespace) -> int:
    """Print one alert type: what triggers it, why it matters, how to fix it, its parameters."""
    with api_channel(args.controller, plaintext=args.plaintext) as channel:
        response = catalog_pb2_grpc.CatalogServiceStub(channel).GetAlertType(
            catalog_pb2.GetAlertTypeRequest(id=args.id), timeout=args.timeout
        )
    t = response.alert_type
    if args.output == "json":
        print(to_json(t))
        return 0
    wrap = textwrap.TextWrapper(width=100, initial_indent="  ", subsequent_indent="  ")
    print(f"{t.id} — {t.title}")
    print(
        f"category {_category(t.category)}, default priority {priority(t.default_priority)}"
        + (", can block" if t.blockable else "")
    )
    for heading, text in (
        ("What triggers it", t.description),
        ("Why it matters", t.rationale),
        ("How to fix it", t.remediation),
    ):
        print(f"\n{heading}:\n" + wrap.fill(text))
    if t.params:
        print("\nParameters:")
        print(
            table(
                ("NAME", "TYPE", "DEFAULT", "DESCRIPTION"),
                [[p.name, p.type, _value(p.default), p.description] for p in t.params],
            )
        )
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `telltale catalog …`."""
    p = sub.add_parser("catalog", help="the alert types policies configure")
    actions = p.add_subparsers(dest="catalog_command", metavar="ACTION", required=True)
    q = actions.add_parser("list", help="list alert types")
    q.add_argument("-o", "--output", choices=["table", "json"], default="table")
    add_api_options(q)
    q.set_defaults(func=list_catalog)
    q = actions.add_parser("show", help="describe one alert type and its parameters")
    q.add_argument("id", help="alert type id, e.g. process.shell_launched")
    q.add_argument("-o", "--output", choices=["text", "json"], default="text")
    add_api_options(q)
    q.set_defaults(func=show_alert_type)
