"""Rendering API objects for people (tables) and programs (JSON)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from telltale.v1 import alert_pb2, common_pb2


def to_json(message: Message, **extra: object) -> str:
    """One message as JSON with the proto field names, plus `extra` top-level fields."""
    data = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return json.dumps({**data, **extra}, sort_keys=True)


def clean(text: str) -> str:
    """`text` safe for a terminal: control and formatting characters (bidi overrides) are escaped.

    Paths, arguments and names come from the workloads being watched; a hostile one must not be
    able to rewrite the operator's screen.
    """
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table with columns sized to their content."""
    rows = [[clean(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


def labelled(lines: Sequence[tuple[str, str]]) -> str:
    """Lines of a label and a value, the values aligned after the longest label and made safe for a
    terminal (`clean`); the labels are the program's own and are not cleaned."""
    width = max((len(label) for label, _ in lines), default=0)
    return "\n".join(f"{label:<{width}}  {clean(value)}" for label, value in lines)


def when(ts: Timestamp) -> str:
    """A timestamp as local-agnostic UTC text, or '-' when unset."""
    if not ts.seconds and not ts.nanos:
        return "-"
    return datetime.fromtimestamp(ts.seconds, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def priority(value: int) -> str:
    """'P1'…'P4'."""
    if not value:
        return "-"
    return common_pb2.Priority.Name(common_pb2.Priority.ValueType(value)).removeprefix("PRIORITY_")


def state(value: int) -> str:
    """'open', 'acknowledged', …"""
    name = alert_pb2.AlertState.Name(alert_pb2.AlertState.ValueType(value))
    return name.removeprefix("ALERT_STATE_").lower().replace("_", " ")


ALERT_HEADERS = (
    "PRI",
    "TYPE",
    "APPLICATION",
    "SUBJECT",
    "COUNT",
    "NODES",
    "LAST SEEN",
    "STATE",
    "FINGERPRINT",
)


def alert_row(alert: alert_pb2.Alert) -> list[str]:
    """One alert as a table row."""
    app = alert.application + (f"/{alert.component}" if alert.component else "")
    return [
        priority(alert.priority),
        alert.alert_type,
        app,
        alert.subject,
        str(alert.occurrences),
        ",".join(alert.nodes),
        when(alert.last_seen),
        state(alert.state),
        alert.fingerprint,
    ]
