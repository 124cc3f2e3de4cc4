"""Reading and writing policy YAML: plain data plus the line of every field.

Reading is stricter than ``yaml.safe_load``: duplicate keys, anchors and aliases, merge keys and
custom tags are reported as problems instead of being silently resolved, and timestamps are
kept as text so that nanosecond precision survives. Keys are taken as written (``on:`` is the
string ``"on"``, not a boolean).
"""

from __future__ import annotations

from typing import Any

import yaml

from telltale.engine.errors import PolicyValidationError, Violation

MAX_DOCUMENT_CHARS = 1 << 20
"""Longest document accepted (1 MiB): room for a blocklist of tens of thousands of networks."""

_MAX_DEPTH = 32
_TAG = "tag:yaml.org,2002:"
_PLAIN_TEXT_TAGS = frozenset({f"{_TAG}str", f"{_TAG}timestamp"})
_SCALAR_TAGS = frozenset({f"{_TAG}null", f"{_TAG}bool", f"{_TAG}int", f"{_TAG}float"})

_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_BaseDumper: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def join(base: str, key: str) -> str:
    """The path of ``key`` inside the mapping at ``base``."""
    return f"{base}.{key}" if base else key


class _Reader:
    def __init__(self, loader: yaml.SafeLoader) -> None:
        self.loader = loader
        self.lines: dict[str, int] = {}
        self.errors: list[Violation] = []
        self.seen: set[int] = set()

    def walk(self, node: yaml.Node, path: str, depth: int) -> object:
        line = node.start_mark.line + 1
        if id(node) in self.seen:
            self.errors.append(Violation(path, f"anchors and aliases are not supported (line {line})"))
            return None
        self.seen.add(id(node))
        if depth > _MAX_DEPTH:
            self.errors.append(Violation(path, f"nesting deeper than {_MAX_DEPTH} levels (line {line})"))
            return None
        if isinstance(node, yaml.MappingNode) and node.tag == f"{_TAG}map":
            return self._mapping(node, path, depth)
        if isinstance(node, yaml.SequenceNode) and node.tag == f"{_TAG}seq":
            items: list[object] = []
            for index, item in enumerate(node.value):
                child = f"{path}[{index}]"
                self.lines.setdefault(child, item.start_mark.line + 1)
                items.append(self.walk(item, child, depth + 1))
            return items
        if node.tag in _PLAIN_TEXT_TAGS:
            return str(node.value)
        if node.tag in _SCALAR_TAGS:
            try:
                return self.loader.construct_object(node)
            # An explicit tag on a bad value: PyYAML's constructors raise whatever the text makes
            # them hit (`!!int` with no value: IndexError).
            except (yaml.YAMLError, ValueError, LookupError, TypeError, ArithmeticError):
                self.errors.append(Violation(path, f"{node.value!r} is not a valid {node.tag} (line {line})"))
                return None
        self.errors.append(Violation(path, f"unsupported YAML tag {node.tag} (line {line})"))
        return None

    def _mapping(self, node: yaml.MappingNode, path: str, depth: int) -> dict[str, object]:
        result: dict[str, object] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == f"{_TAG}merge":
                self.errors.append(Violation(path, f"merge keys '<<' are not supported (line {line})"))
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self.errors.append(Violation(path, f"keys must be plain text (line {line})"))
                continue
            key = str(key_node.value)
            child = join(path, key)
            if key in result:
                first = self.lines.get(child, 0)
                self.errors.append(
                    Violation(child, f"duplicate key {key!r} (line {line}; first at line {first})")
                )
                continue
            self.lines[child] = line
            result[key] = self.walk(value_node, child, depth + 1)
        return result


def load(text: str) -> tuple[object, dict[str, int], list[Violation]]:
    """Decode one YAML document into plain data.

    Returns the data, the 1-based line of each field path, and the structural problems found
    (duplicate keys, aliases, unsupported tags). Raises PolicyValidationError for text that is
    not one well-formed YAML document (the description gives the line and column).
    """
    if len(text) > MAX_DOCUMENT_CHARS:
        raise PolicyValidationError(
            [Violation("", f"document too long: {len(text)} characters, at most {MAX_DOCUMENT_CHARS}")]
        )
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise PolicyValidationError([Violation("", "empty document")])
        reader = _Reader(loader)
        data = reader.walk(node, "", 0)
    except yaml.MarkedYAMLError as exc:
        raise PolicyValidationError([Violation("", _describe(exc))]) from None
    except yaml.YAMLError as exc:
        raise PolicyValidationError([Violation("", f"YAML syntax error: {exc}")]) from None
    finally:
        loader.dispose()
    return data, reader.lines, reader.errors


def _describe(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    what = " ".join(part for part in (exc.context, exc.problem) if part)
    return f"YAML syntax error{where}: {what or 'malformed document'}"


def line_of(path: str, lines: dict[str, int]) -> int | None:
    """The line of ``path``, or of its closest enclosing field that has one."""
    while path:
        if path in lines:
            return lines[path]
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""
    return None


class FlowList(list[Any]):
    """A list written on one line (``[sh, bash]``) by :func:`dump`."""


class _Dumper(_BaseDumper):  # type: ignore[valid-type,misc]
    pass


def _represent_flow(dumper: yaml.SafeDumper, data: FlowList) -> yaml.Node:
    return dumper.represent_sequence(f"{_TAG}seq", data, flow_style=True)


_Dumper.add_representer(FlowList, _represent_flow)


def dump(data: object) -> str:
    """Write plain data as block-style YAML, keeping mapping order."""
    return str(
        yaml.dump(
            data,
            Dumper=_Dumper,
            sort_keys=False,
            default_flow_style=False,
            allow_unicode=True,
            width=100,
        )
    )
