"""Hypothesis strategies for policies: valid ones of every alert type, and invalid documents
each paired with the field path its problem must be reported at."""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

from hypothesis import strategies as st

from telltale.engine import params as p
from telltale.engine.catalog import CATALOG, AlertTypeSpec
from telltale.engine.linux import CAPABILITIES
from telltale.engine.model import Policy, Rule, RuleException
from telltale.engine.params import ParamSpec, ParamValue
from telltale.engine.policy import to_mapping
from telltale.v1 import policy_pb2

words = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=12)
_no_space = words.filter(lambda w: not any(c.isspace() for c in w))
_program = words.filter(lambda w: "/" not in w and w.strip() == w and bool(w.strip()))
_path = words.map(lambda w: "/" + w)


@st.composite
def networks(draw: st.DrawFn) -> str:
    address = draw(st.ip_addresses())
    prefix = draw(st.integers(0, address.max_prefixlen))
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


VALID_ITEMS: dict[Callable[..., str | None] | None, st.SearchStrategy[Any]] = {
    p.program_name: _program,
    p.program_glob: _program,
    p.absolute_path: _path,
    p.glob: words.filter(str.strip),
    p.port: st.integers(0, 65535),
    p.cidr: networks(),
    p.country_code: st.from_regex(r"[A-Z]{2}", fullmatch=True),
    p.capability: st.sampled_from(CAPABILITIES),
    p.function_name: st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True),
    p.non_negative: st.integers(0, 2**40),
    p.sysctl_name: st.from_regex(r"[a-z0-9_][a-z0-9_.\-/]{0,20}", fullmatch=True),
    p.sysctl_expectation: st.from_regex(r"[a-z][a-z0-9_.]{0,15}(=|>=|<=)-?[0-9]{1,4}", fullmatch=True),
    p.tls_version: st.sampled_from(p.TLS_VERSIONS),
    p.hostname: st.from_regex(r"[a-z0-9][a-z0-9.-]{0,20}", fullmatch=True),
    p.word: _no_space,
}
"""A strategy of valid items for each item check the catalog uses (None: no check)."""

INVALID_ITEMS: dict[Callable[..., str | None], list[Any]] = {
    p.program_name: ["/bin/sh", ""],
    p.program_glob: ["bin/py*", " "],
    p.absolute_path: ["tmp", ""],
    p.glob: ["", "  "],
    p.port: [70000, -1],
    p.cidr: ["10.0.0.1/8", "nonsense"],
    p.country_code: ["usa", "us", "U1"],
    p.capability: ["CAP_NOPE", "sys_admin"],
    p.function_name: ["str cpy", "1x"],
    p.non_negative: [-1],
    p.sysctl_name: ["Net Ipv4", ""],
    p.sysctl_expectation: ["kernel.x>1", "kernel.x=on"],
    p.tls_version: ["TLS1.2", "tlsv1.0"],
    p.hostname: ["a b", ""],
    p.word: ["two words", ""],
}
"""Values each item check must refuse."""


def value(param: ParamSpec) -> st.SearchStrategy[ParamValue]:
    """Valid values of ``param``."""
    if param.type == "bool":
        return st.booleans()
    item = (
        VALID_ITEMS[param.check]
        if param.check is not None
        else (words if param.type in ("string", "strings") else st.integers(-(2**40), 2**40))
    )
    if param.type in ("strings", "ints"):
        return st.lists(item, max_size=4).map(tuple)
    return item


@st.composite
def exceptions(draw: st.DrawFn, spec: AlertTypeSpec) -> RuleException:
    scopes = {"application": words, "component": words, "binary": _path}
    if "path" in spec.exception_scopes:
        scopes["path"] = _path
    if "destination" in spec.exception_scopes:
        scopes["destination"] = networks()
    chosen = draw(st.lists(st.sampled_from(sorted(scopes)), min_size=1, max_size=3, unique=True))
    return RuleException(
        reason=draw(words.filter(str.strip)),
        expires_ns=draw(st.none() | st.integers(0, 253_402_300_799_999_999_999)),
        **{name: draw(scopes[name]) for name in chosen},
    )


@st.composite
def rules(draw: st.DrawFn, spec: AlertTypeSpec) -> Rule:
    values = {param.name: draw(value(param)) for param in spec.params}
    actions = [policy_pb2.RULE_ACTION_ALERT] + ([policy_pb2.RULE_ACTION_BLOCK] if spec.blockable else [])
    return Rule(
        alert_type=spec.id,
        enabled=draw(st.booleans()),
        priority=draw(st.sampled_from([1, 2, 3, 4])),
        action=draw(st.sampled_from(actions)),
        params=MappingProxyType(values),
        exceptions=tuple(draw(st.lists(exceptions(spec), max_size=2))),
    )


@st.composite
def policies(draw: st.DrawFn, max_rules: int = 6) -> Policy:
    types = draw(st.lists(st.sampled_from(list(CATALOG)), unique=True, max_size=max_rules))
    return Policy(
        name=draw(st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9 ._-]{0,61}[A-Za-z0-9._-])?", fullmatch=True)),
        description=draw(st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)),
        builtin=draw(st.booleans()),
        revision=draw(st.integers(0, 2**40)),
        rules=MappingProxyType({t: draw(rules(CATALOG[t])) for t in CATALOG if t in types}),
        cloned_from=draw(st.sampled_from(["", "Standard", "Max Alert"])),
        updated_by=draw(st.text(max_size=10).filter(lambda t: "\x00" not in t) | st.just("")),
        updated_at_ns=draw(st.integers(0, 253_402_300_799_999_999_999)),
    )


# Invalid documents: a valid document with one mutation, and the path that must be reported.

Mutation = Callable[[st.DrawFn, dict[str, Any]], str]


def _rule_body(
    draw: st.DrawFn, doc: dict[str, Any], pick: Callable[[AlertTypeSpec], bool] = lambda s: True
) -> tuple[AlertTypeSpec, dict[str, Any], str]:
    """A rule of ``doc`` (added if needed) whose type satisfies ``pick``; its body and path."""
    spec = draw(st.sampled_from([s for s in CATALOG.values() if pick(s)]))
    body = doc["spec"]["rules"].setdefault(spec.id, {"enabled": True})
    return spec, body, f"spec.rules.{spec.id}"


def _top_key(draw: st.DrawFn, doc: dict[str, Any]) -> str:
    key = draw(st.sampled_from(["extra", "status", "Spec"]))
    doc[key] = 1
    return key


def _api_version(draw: st.DrawFn, doc: dict[str, Any]) -> str:
    key = draw(st.sampled_from(["apiVersion", "kind"]))
    doc[key] = draw(st.sampled_from(["telltale.dev/v2", "Policy", 3, None]))
    return key


def _name(draw: st.DrawFn, doc: dict[str, Any]) -> str:
    doc["metadata"]["name"] = draw(st.sampled_from(["-x", "a/b", "x" * 64, "ends ", "", 12]))
    return "metadata.name"


def _revision(draw: st.DrawFn, doc: dict[str, Any]) -> str:
    doc["metadata"]["revision"] = draw(st.sampled_from([-1, "7", True, 1.5]))
    return "metadata.revision"


def _unknown_type(draw: st.DrawFn, doc: dict[str, Any]) -> str:
    type_id = draw(st.sampled_from(["process.nope", "network", "node.ip-forwarding"]))
    doc["spec"]["rules"][type_id] = {}
    return f"spec.rules.{type_id}"


def _rule_field(draw: st.DrawFn, doc: dict[str, Any]) -> str:
    _, body, at = _rule_body(draw, doc)
    field, bad = draw(
        st.sampled_from(
            [
                ("enabled", "yes"),
                ("enabled", 1),
                ("priority", "P5"),
                ("priority", 1),
                ("action", "deny"),
                ("colour", "red"),
                ("params", [1]),
                ("exceptions", {"binary": "/x"}),
            ]
        )
    )
    body[field] = bad
    return f"{at}.{field}"


def _block(draw: st.DrawFn, doc: dict[str, Any]) -> str:
    _, body, at = _rule_body(draw, doc, lambda s: not s.blockable)
    body["action"] = "block"
    return f"{at}.action"


def _param(draw: st.DrawFn, doc: dict[str, Any]) -> str:
    spec, body, at = _rule_body(draw, doc, lambda s: bool(s.params))
    param = draw(st.sampled_from(spec.params))
    params = body.setdefault("params", {})
    choice = draw(st.sampled_from(["unknown", "type", "item"]))
    if choice == "unknown":
        params["no_such_param"] = 1
        return f"{at}.params.no_such_param"
    if choice == "item" and param.check is not None:
        bad = draw(st.sampled_from(INVALID_ITEMS[param.check]))
        if param.type in ("strings", "ints"):
            items = list(params.get(param.name) or [])
            index = draw(st.integers(0, len(items)))
            items.insert(index, bad)
            params[param.name] = items
            return f"{at}.params.{param.name}[{index}]"
        params[param.name] = bad
        return f"{at}.params.{param.name}"
    wrong = {"string": 5, "int": "5", "bool": "yes", "strings": "text", "ints": {"a": 1}}[param.type]
    params[param.name] = wrong
    return f"{at}.params.{param.name}"


def _exception(draw: st.DrawFn, doc: dict[str, Any]) -> str:
    spec, body, at = _rule_body(draw, doc)
    items = body.setdefault("exceptions", [])
    index = len(items)
    at = f"{at}.exceptions[{index}]"
    unusable = sorted({"path", "destination"} - spec.exception_scopes)
    cases = [
        ({"binary": "/x"}, f"{at}.reason"),
        ({"binary": "/x", "reason": " "}, f"{at}.reason"),
        ({"reason": "r"}, at),
        ({"binary": "/x", "reason": "r", "expires": "tomorrow"}, f"{at}.expires"),
        ({"binary": "/x", "reason": "r", "owner": "me"}, f"{at}.owner"),
        ({"binary": 5, "reason": "r"}, f"{at}.binary"),
    ]
    if "destination" in spec.exception_scopes:
        cases.append(({"destination": "10.0.0.300", "reason": "r"}, f"{at}.destination"))
    cases.extend(
        ({scope: "/x" if scope == "path" else "10.0.0.0/8", "reason": "r"}, f"{at}.{scope}")
        for scope in unusable
    )
    item, path = draw(st.sampled_from(cases))
    items.append(item)
    return path


def _rules_shape(draw: st.DrawFn, doc: dict[str, Any]) -> str:
    doc["spec"]["rules"] = draw(st.sampled_from([["process.shell_launched"], "all", 3]))
    return "spec.rules"


MUTATIONS: list[Mutation] = [
    _top_key,
    _api_version,
    _name,
    _revision,
    _unknown_type,
    _rule_field,
    _block,
    _param,
    _exception,
    _rules_shape,
]


@st.composite
def invalid_documents(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """A document (plain data) with one problem, and the field path that problem concerns."""
    doc = copy.deepcopy(to_mapping(draw(policies(max_rules=3))))
    doc["spec"].setdefault("rules", {})
    mutation = draw(st.sampled_from(MUTATIONS))
    return doc, mutation(draw, doc)
