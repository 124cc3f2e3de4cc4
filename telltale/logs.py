"""Logging of the daemons: text for people, JSON lines for log pipelines, and no secret either way.

`configure(level, fmt)` sets up the root logger once per process. With ``fmt="json"`` each record
is one JSON object on one line::

    {"time": "2026-11-27T23:05:01.123456Z", "level": "info", "logger": "telltale.controller.server",
     "message": "controller serving", "controller_id": "c1", "listen": "127.0.0.1:7443"}

Structured fields are the ones a call passes with ``extra=``; in text mode they follow the message
as ``key=value``. An exception adds ``"exception"`` (the formatted traceback), ``stack_info=True``
adds ``"stack"``.

`SecretFilter`, installed on the root handler, rewrites whatever looks like a credential — a bearer
token, an ``authorization`` header, ``password=…``/``token=…``/``secret=…`` pairs (also with quoted
keys, as a dict or a tuple prints them, and as ``--…-password VALUE`` command-line flags), telltale
API tokens wherever they appear, a field whose name says it holds one — into ``[REDACTED]`` before
any formatter sees it, in the message, its arguments, the exception and the stack. It is a safety net, not a
licence: code still must not log credentials on purpose.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import sys
from collections.abc import Mapping
from typing import Any, Literal, TextIO, get_args

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[str, ...] = get_args(LogFormat)
LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error")
REDACTED = "[REDACTED]"

# The attributes every LogRecord has; anything else on a record came in through `extra=`.
_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime", "taskName"}
)

_WORDS = r"password|passwd|passphrase|pwd|secret|token|api[_-]?key|authorization"
# A field or key whose name says it carries a credential.
_SECRET_NAME = re.compile(rf"(?i)(?:^|[_\-.])(?:{_WORDS}|credentials?|private[_-]?key)$")
_VALUE = r"(?!\[REDACTED\])(\"[^\"]*\"|'[^']*'|[^\s,;&)\]}]+)"  # not one redacted already
_SECRET_PATTERNS = (
    # "Bearer abc.def", "authorization: Basic xyz"
    re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{4,}"),
    # password=…, token: "…", secret = …, api_key=…, "password": "…" (a dict's repr or JSON)
    re.compile(rf"(?i)\b((?:[a-z0-9_-]*[_-])?(?:{_WORDS})[\"']?)(\s*[=:]\s*){_VALUE}"),
    # ('token', '…'): a pair as a tuple prints it
    re.compile(rf"(?i)([\"'](?:[a-z0-9_-]*[_-])?(?:{_WORDS})[\"']\s*,\s*){_VALUE}"),
    # --etcd-password VALUE, --token VALUE (a command line; not --…-password-file PATH)
    re.compile(rf"(?i)(--(?:[a-z0-9-]*-)?(?:{_WORDS}))(\s+|=){_VALUE}"),
    # telltale's API tokens (tt_<id>_<secret>, controller/tokens.py), wherever they appear, also
    # glued to a word or after %20
    re.compile(r"tt_[0-9a-f]{12}_[A-Za-z0-9_-]{8,}|\btt_[A-Za-z0-9_-]{16,}"),
    # private keys in PEM form
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)", re.DOTALL),
)


def redact(text: str) -> str:
    """`text` with every credential-looking part replaced by [REDACTED]."""
    if not text:
        return text
    bearer, pair, pair_tuple, flag, api_token, pem = _SECRET_PATTERNS
    text = bearer.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = flag.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = pair.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = pair_tuple.sub(lambda m: f"{m.group(1)}{REDACTED}", text)
    text = api_token.sub(REDACTED, text)
    return pem.sub(REDACTED, text)


def _redact_value(key: str, value: Any) -> Any:
    if _SECRET_NAME.search(key):
        return REDACTED
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value("", v) for v in value]
    return value


class SecretFilter(logging.Filter):
    """Redacts credentials from a record's message, arguments, extra fields and exception text.

    The message is formatted here (arguments merged), so a secret passed as an argument is caught
    too; the record then carries the redacted message and no arguments.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a broken format string: keep what there is
            message = str(record.msg)
        record.msg = redact(message)
        record.args = None
        for key in extra_fields(record):
            record.__dict__[key] = _redact_value(key, record.__dict__[key])
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a log call passed with `extra=`."""
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, then the extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
        entry: dict[str, Any] = {
            "time": when.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            if key not in entry:
                entry[key] = _jsonable(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, ensure_ascii=False, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value …``"""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = extra_fields(record)
        if fields:
            line += " " + " ".join(
                f"{k}={json.dumps(_jsonable(v), ensure_ascii=False)}" for k, v in fields.items()
            )
        return line


def configure(level: str = "warning", fmt: str = "text", stream: TextIO | None = None) -> logging.Handler:
    """Send the root logger's records at `level` and above to `stream` (stderr) in `fmt`.

    Replaces the handlers a previous call installed; raises ValueError for an unknown level or format.
    Returns the handler (tests read what it writes).
    """
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format {fmt!r}: use one of {', '.join(LOG_FORMATS)}")
    if level.lower() not in LOG_LEVELS:
        raise ValueError(f"log level {level!r}: use one of {', '.join(LOG_LEVELS)}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(SecretFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_telltale", False):
            root.removeHandler(old)
    handler._telltale = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler
