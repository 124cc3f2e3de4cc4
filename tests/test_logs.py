"""Structured logs: JSON lines with fields, text with key=value, and no secret in either; the
--log-format flag of the daemons; the JSON output of a real controller process."""

from __future__ import annotations

import io
import json
import logging
import re
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from telltale import logs
from telltale.cli.main import build_parser
from telltale.devcluster import LocalCluster, wait_for
from telltale.nodeagent import config as agent_config
from telltale.v1 import agent_pb2, agent_pb2_grpc

# Lines gRPC's C core writes to stderr by itself, in absl's format, bypassing Python's logging.
GRPC_CORE_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d")


def json_lines(lines: list[str]) -> list[dict[str, object]]:
    """Each line parsed as a JSON object; a line that is not one fails the test, quoted."""
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"a log line is not JSON: {line!r}")
    return entries


@pytest.fixture
def capture() -> Iterator[tuple[io.StringIO, logging.Logger]]:
    """A JSON handler on the root logger writing to a buffer, and a logger to log with; undone after."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    buffer = io.StringIO()
    logs.configure("debug", "json", stream=buffer)
    try:
        yield buffer, logging.getLogger("telltale.test")
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)


def lines(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_a_json_line_has_time_level_logger_message_and_the_extra_fields(
    capture: tuple[io.StringIO, logging.Logger],
) -> None:
    """One object per record; fields passed with extra= are top-level keys of it."""
    buffer, log = capture
    log.info("node %s connected", "n1", extra={"node_id": "n1", "revision": 7, "tags": ("a", "b")})
    log.warning("two\nlines")
    first, second = lines(buffer)
    assert first["message"] == "node n1 connected"
    assert (first["level"], first["logger"], first["node_id"], first["revision"]) == (
        "info",
        "telltale.test",
        "n1",
        7,
    )
    assert first["tags"] == ["a", "b"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", str(first["time"]))
    assert second["message"] == "two\nlines"


def test_an_exception_is_one_field_of_the_same_line(capture: tuple[io.StringIO, logging.Logger]) -> None:
    """log.exception keeps one JSON object per line, with the traceback in "exception"."""
    buffer, log = capture
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed", extra={"controller_id": "c1"})
    [entry] = lines(buffer)
    assert entry["level"] == "error"
    assert entry["controller_id"] == "c1"
    assert "ValueError: boom" in str(entry["exception"])


SECRETS = [
    ("authorization: Bearer tt_abcdefghijklmnopqrstuvwxyz012345", "abcdefghijklmnop"),
    ("calling with token=s3cr3t-value-here", "s3cr3t-value-here"),
    ('etcd password="hunter2 with spaces"', "hunter2"),
    ("header Authorization=Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA"),
    ("api_key: AKIA1234567890", "AKIA1234567890"),
    ("created tt_3f9a1c2b_Zm9vYmFyYmF6cXV4cXV1eHF1dXhxdXV4cXV1eA for ops", "Zm9vYmFyYmF6cXV4"),
    ("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\n-----END PRIVATE KEY-----", "MIIEvQIBADANBg"),
    ('settings {"password": "q1w2e3r4t5"} loaded', "q1w2e3r4t5"),
    ("settings {'etcd_password': 'q1w2e3r4t5', 'user': 'u'} loaded", "q1w2e3r4t5"),
    ("headers [('token', 'q1w2e3r4t5'), ('x', 'y')]", "q1w2e3r4t5"),
    ("url /x?a=1&bearer=xtt_0123456789ab_Zm9vYmFyYmF6cXV4cXV1eA", "Zm9vYmFyYmF6cXV4"),
    ("query q=%20tt_0123456789ab_Zm9vYmFyYmF6cXV4cXV1eA", "Zm9vYmFyYmF6cXV4"),
    ("key passphrase=q1w2e3r4t5 used", "q1w2e3r4t5"),
    ("db pwd: q1w2e3r4t5", "q1w2e3r4t5"),
    ("argv telltale controller --etcd-password q1w2e3r4t5 --listen x", "q1w2e3r4t5"),
    ("argv telltale policy list --token=q1w2e3r4t5", "q1w2e3r4t5"),
]


@pytest.mark.parametrize(("text", "secret"), SECRETS)
def test_no_secret_reaches_a_line_in_the_message_or_its_arguments(
    capture: tuple[io.StringIO, logging.Logger], text: str, secret: str
) -> None:
    """Credentials in a message, in an argument or in an exception are redacted; the rest stays."""
    buffer, log = capture
    log.warning(text)
    log.warning("request: %s", text)
    try:
        raise RuntimeError(text)
    except RuntimeError:
        log.exception("failed")
    output = buffer.getvalue()
    assert secret not in output
    assert logs.REDACTED in output
    assert "request:" in output


def test_no_secret_reaches_a_line_through_the_stack(capture: tuple[io.StringIO, logging.Logger]) -> None:
    """stack_info=True adds the caller's stack (a "stack" field); source lines in it are redacted."""
    buffer, log = capture
    log.warning("where", stack_info=True)  # the stack shows this line: password=q1w2e3r4t5
    (entry,) = lines(buffer)
    assert "test_no_secret_reaches_a_line_through_the_stack" in str(entry["stack"])
    assert "q1w2e3r4t5" not in buffer.getvalue()
    assert logs.REDACTED in str(entry["stack"])


def test_a_redacted_line_keeps_what_is_not_a_secret() -> None:
    """The flags that name a file keep their path; ordinary words that contain tt_ stay."""
    assert (
        logs.redact("--etcd-password-file /etc/pw --token-file /t")
        == "--etcd-password-file /etc/pw --token-file /t"
    )
    assert logs.redact("a button_state and buttt_on") == "a button_state and buttt_on"


def test_no_secret_reaches_a_line_through_a_field(capture: tuple[io.StringIO, logging.Logger]) -> None:
    """A field named like a credential is redacted whatever it holds; other fields are scanned."""
    buffer, log = capture
    log.info(
        "login",
        extra={
            "password": "pw-123",
            "bearer_token": 42,
            "etcd_credentials": {"user": "root"},
            "header": "Bearer abcdef123456",
            "node_id": "n1",
        },
    )
    [entry] = lines(buffer)
    assert entry["password"] == entry["bearer_token"] == entry["etcd_credentials"] == logs.REDACTED
    assert entry["header"] == f"Bearer {logs.REDACTED}"
    assert entry["node_id"] == "n1"


def test_text_lines_carry_the_fields_as_key_value_and_redact_too() -> None:
    """The text format: time LEVEL logger: message key=value, secrets redacted the same way."""
    buffer = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = logs.configure("info", "text", stream=buffer)
    try:
        logging.getLogger("telltale.test").info(
            "policy revision %d pushed", 5, extra={"revision": 5, "token": "abc"}
        )
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    line = buffer.getvalue().strip()
    assert re.fullmatch(
        r"\S+ \S+ INFO telltale.test: policy revision 5 pushed revision=5 token=\"\[REDACTED\]\"", line
    ), line


def test_unknown_formats_and_levels_are_refused() -> None:
    with pytest.raises(ValueError, match="log format 'xml'"):
        logs.configure("info", "xml")
    with pytest.raises(ValueError, match="log level 'loud'"):
        logs.configure("loud", "text")


def test_the_daemons_take_log_format_before_or_after_the_subcommand() -> None:
    """--log-format json works as `telltale --log-format json controller` and after the subcommand;
    the agent also reads it from its configuration."""
    parser = build_parser()
    assert parser.parse_args(["--log-format", "json", "controller"]).log_format == "json"
    assert parser.parse_args(["controller", "--log-format", "json"]).log_format == "json"
    args = parser.parse_args(["controller", "--log-level", "debug", "--metrics-listen", "127.0.0.1:9464"])
    assert (args.log_level, args.log_format, args.metrics_listen) == ("debug", None, "127.0.0.1:9464")
    agent = parser.parse_args(["--log-format", "json", "agent"])
    assert agent_config.load_config(agent, {}).log_format == "json"
    agent = parser.parse_args(["agent", "--log-format", "json"])
    assert agent_config.load_config(agent, {}).log_format == "json"
    assert agent_config.AgentConfig().log_format == "text"
    with pytest.raises(SystemExit):
        parser.parse_args(["controller", "--log-format", "xml"])


@pytest.mark.e2e
def test_a_controller_with_log_format_json_writes_only_json_lines(tmp_path: Path) -> None:
    """A real controller's stderr: one JSON object per line; the key events carry their fields."""
    cluster = LocalCluster(tmp_path, controller_args=["--log-format", "json"], log_level="info")
    cluster.workdir.mkdir(parents=True, exist_ok=True)
    node_id = f"logs-{uuid.uuid4().hex[:8]}"
    try:
        cluster.start_controller()
        with grpc.insecure_channel(cluster.api) as channel:
            hello = agent_pb2.ConnectRequest(hello=agent_pb2.Hello(node_id=node_id, hostname="h"))
            call = agent_pb2_grpc.AgentServiceStub(channel).Connect(iter([hello]), timeout=30)
            for _ in call:  # the stream ends when the agent's requests do
                pass
        log_path = tmp_path / "controller.log"
        wait_for(lambda: node_id in log_path.read_text(), 20, "a log line about the node")
        cluster.processes["controller"].send_signal(signal.SIGTERM)
        assert cluster.processes["controller"].wait(timeout=30) == 0
    finally:
        cluster.stop()
    raw = [line for line in log_path.read_text().splitlines() if line and not GRPC_CORE_LINE.match(line)]
    entries = json_lines(raw)
    assert entries
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= entry.keys(), entry
    serving = next(e for e in entries if "serving on" in str(e["message"]))
    assert serving["logger"] == "telltale.controller.server"
    assert serving["listen"] == cluster.api
    assert serving["controller_id"]
    assert isinstance(serving["policy_revision"], int)
    assert serving["policy_revision"] > 0
    loaded = [e for e in entries if e["logger"] == "telltale.controller.policies" and "policy_revision" in e]
    assert loaded
    assert loaded[-1]["policy_revision"] == serving["policy_revision"]
    stopping = next(e for e in entries if "stopping" in str(e["message"]))
    assert stopping["controller_id"] == serving["controller_id"]
    assert any(node_id in str(e["message"]) for e in entries)


@pytest.mark.e2e
def test_an_agent_with_log_format_json_writes_only_json_lines(tmp_path: Path) -> None:
    """The agent takes --log-format from its settings: its stderr is JSON lines too."""
    with LocalCluster(tmp_path, agent_args=["--log-format", "json"], log_level="info") as cluster:
        log_path = tmp_path / "agent.log"
        wait_for(lambda: bool(log_path.read_text().strip()), 20, "the agent to log something")
        cluster.stop("agent")
    raw = [line for line in log_path.read_text().splitlines() if line and not GRPC_CORE_LINE.match(line)]
    entries = json_lines(raw)
    assert entries
    assert all(str(e["logger"]).startswith("telltale") for e in entries)
