"""Fuzzing the policy document reader and validator (`parse_document`).

Whatever the text, the parser returns a Policy or raises PolicyValidationError listing at least
one problem, each with a description and, unless it concerns the whole document, the field path it
concerns; a mutation of a valid document that is refused is refused at the mutated path (or its
parent or a field inside it). Nothing else escapes, and no case hangs.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml
from hypothesis import given
from hypothesis import strategies as st
from policygen import policies

from fuzz.profiles import fuzz_settings, hang_guard
from telltale.engine.errors import PolicyValidationError
from telltale.engine.model import Policy
from telltale.engine.policy import parse_document, to_document, to_mapping
from telltale.engine.yamlio import dump

_TOKENS = [
    *("apiVersion", "kind", "metadata", "spec", "rules", "name", "description", "revision"),
    *("telltale.dev/v1", "Policy", "process.shell_launched", "network.listen", "enabled", "priority"),
    *("action", "params", "exceptions", "application", "binary", "expires", "reason", "P1", "P4"),
    *(":", ": ", " ", "\n", "  ", "    ", "- ", "[", "]", "{", "}", ",", "'", '"', "#", "?", "|", ">"),
    *("&a ", "*a", "<<: ", "!!python/object/apply:os.system ", "!!binary ", "!!int ", "!!str ", "!x "),
    *("---\n", "...\n", "%YAML 1.1\n", "~", "null", "yes", "on", "1e309", "0x1F", "-0", ".nan", "\t"),
    *("2024-01-01T00:00:00Z", "9999-12-31T23:59:59.999999999Z", "10.0.0.0/8", "::/0", "\\", "\x00"),
    *("\ufeff", "é", "\U0001f600", "a" * 300),
]
yamlish = st.lists(st.sampled_from(_TOKENS), max_size=60).map("".join)

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from(["P1", "P5", "alert", "block", "telltale.dev/v1", "Policy", "-1", "", "x" * 70]),
)
nested = st.recursive(
    _scalars,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=12), kids, max_size=4),
    max_leaves=20,
)


def check(text: str) -> Policy | PolicyValidationError:
    """Parse `text` under the watchdog: the policy, or the error, checked to name what is wrong."""
    with hang_guard():
        try:
            return parse_document(text)
        except PolicyValidationError as exc:
            error = exc
    assert error.violations, "an error lists at least one problem"
    for violation in error.violations:
        assert violation.description.strip(), violation  # the field is "" for the document itself
    assert str(error).startswith("invalid policy (")
    return error


@fuzz_settings(short_examples=500, long_share=0.4)
@given(st.one_of(st.text(max_size=400), yamlish))
def test_any_text_is_a_policy_or_a_listed_problem(text: str) -> None:
    check(text)


@fuzz_settings(short_examples=200, long_share=0.3)
@given(nested)
def test_any_yaml_data_is_a_policy_or_a_listed_problem(data: object) -> None:
    check(yaml.safe_dump(data))


def _paths(node: object) -> list[tuple[str, str, list[Any], Any]]:
    """Every field of a document as (its path, its container's path, the container's key chain, key)."""
    out: list[tuple[str, str, list[Any], Any]] = []

    def walk(value: object, path: str, chain: list[Any]) -> None:
        if isinstance(value, dict):
            for key, child in value.items():
                sub = f"{path}.{key}" if path else str(key)
                out.append((sub, path, chain, key))
                walk(child, sub, [*chain, key])
        elif isinstance(value, list):
            for index, child in enumerate(value):
                sub = f"{path}[{index}]"
                out.append((sub, path, chain, index))
                walk(child, sub, [*chain, index])

    walk(node, "", [])
    return out


def _related(field: str, path: str) -> bool:
    """`field` is `path`, encloses it, or lies inside it."""
    return not field or any(
        a == b or a.startswith((f"{b}.", f"{b}[")) for a, b in ((field, path), (path, field))
    )


@st.composite
def mutated_documents(draw: st.DrawFn) -> tuple[str, str]:
    """A valid policy document with one field replaced, removed or joined by an unknown one; and
    the path of the change."""
    doc = copy.deepcopy(to_mapping(draw(policies(max_rules=4))))
    fields = _paths(doc)
    path, parent, chain, key = draw(st.sampled_from(fields))
    container: Any = doc
    for step in chain:
        container = container[step]
    action = draw(st.sampled_from(["replace", "remove", "add"]))
    if action == "replace":
        container[key] = draw(nested)
    elif action == "remove":
        del container[key]
    elif isinstance(container, dict):
        extra = draw(st.text(min_size=1, max_size=10).filter(lambda k: k not in container))
        container[extra] = draw(nested)
        path = f"{parent}.{extra}" if parent else extra
    else:
        container.append(draw(nested))
        path = parent
    return dump(doc), path


@fuzz_settings(short_examples=150, long_share=0.15)
@given(mutated_documents())
def test_a_mutated_valid_document_is_refused_at_the_mutated_field(case: tuple[str, str]) -> None:
    text, path = case
    out = check(text)
    if isinstance(out, PolicyValidationError):
        assert any(_related(v.field, path) for v in out.violations), (path, str(out))


@st.composite
def damaged_documents(draw: st.DrawFn) -> str:
    """A valid policy document's text with characters changed, removed or inserted."""
    text = to_document(draw(policies(max_rules=4)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(["change", "remove", "insert"]))
        piece = draw(st.sampled_from(_TOKENS) | st.text(max_size=3))
        if action == "change":
            text = text[:at] + piece + text[at + 1 :]
        elif action == "remove":
            text = text[:at] + text[at + draw(st.integers(1, 20)) :]
        else:
            text = text[:at] + piece + text[at:]
    return text


@fuzz_settings(short_examples=150, long_share=0.15)
@given(damaged_documents())
def test_a_damaged_valid_document_is_a_policy_or_a_listed_problem(text: str) -> None:
    check(text)
