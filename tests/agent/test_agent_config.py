"""Agent configuration: defaults < TOML file < environment < flags, errors naming their source,
the `telltale agent` configuration actions, and the service manager notification."""

from __future__ import annotations

import os
import re
import socket
import tempfile
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from telltale.cli.main import main
from telltale.nodeagent import enforce, notify
from telltale.nodeagent.config import (
    DEFAULT_SPOOL_BYTES,
    SETTINGS,
    AgentConfig,
    ConfigError,
    format_size,
    load_config,
    parse_size,
    render_config,
)
from telltale.nodeagent.defaults import DEFAULT_SOCKET, DEFAULT_STATE_DIR


@pytest.fixture
def no_default_file(tmp_path: Path) -> Path:
    """A default configuration path that does not exist (the host's /etc is never read)."""
    return tmp_path / "absent" / "agent.toml"


def write(tmp_path: Path, text: str, name: str = "agent.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load(
    flags: dict[str, Any] | None = None, environ: dict[str, str] | None = None, *, default_path: Path
) -> AgentConfig:
    return load_config(flags or {}, environ or {}, default_path=default_path)


# -- precedence ------------------------------------------------------------------------------------


def test_every_setting_has_its_default_when_nothing_is_given(no_default_file: Path) -> None:
    """With no file, no variables and no flags, the documented defaults apply and say so."""
    config = load(default_path=no_default_file)
    assert config == AgentConfig()
    assert config.controllers == ["127.0.0.1:7443"]
    assert (config.socket_path, config.state_dir) == (DEFAULT_SOCKET, DEFAULT_STATE_DIR)
    assert (config.plaintext, config.spool_batches, config.spool_bytes) == (False, 4096, DEFAULT_SPOOL_BYTES)
    assert (config.host_state, config.host_state_poll_interval) == (True, 10.0)
    assert (config.enforcement, config.log_level) == ("auto", "warning")
    assert config.config_file is None
    assert all(config.origin(s.key) == "default" for s in SETTINGS)


# key, (TOML value, environment value, flag value), and the parsed values from file, env and flag
PRECEDENCE = [
    ("spool_batches", ("10", "20", "30"), (10, 20, 30)),
    ("spool_bytes", ('"1MiB"', "2MiB", "3MB"), (2**20, 2 * 2**20, 3 * 10**6)),
    ("log_level", ('"debug"', "info", "error"), ("debug", "info", "error")),
    ("enforcement", ('"off"', "on", "auto"), ("off", "on", "auto")),
    ("host_state", ("false", "yes", False), (False, True, False)),
    ("plaintext", ("true", "0", True), (True, False, True)),
    ("host_state_poll_interval", ("1", "2.5", "0.25"), (1.0, 2.5, 0.25)),
    ("socket", ('"/f.sock"', "/e.sock", "/g.sock"), (Path("/f.sock"), Path("/e.sock"), Path("/g.sock"))),
    (
        "controllers",
        (
            '["127.0.0.1:1", "127.0.0.1:2"]',
            "127.0.0.1:3, 127.0.0.1:4",
            ["127.0.0.1:5,127.0.0.1:6", "127.0.0.1:7"],
        ),
        (
            ["127.0.0.1:1", "127.0.0.1:2"],
            ["127.0.0.1:3", "127.0.0.1:4"],
            [f"127.0.0.1:{p}" for p in (5, 6, 7)],
        ),
    ),
]


@pytest.mark.parametrize(("key", "given", "expected"), PRECEDENCE)
def test_the_file_overrides_defaults_the_environment_the_file_and_a_flag_the_environment(
    tmp_path: Path, key: str, given: tuple[str, str, object], expected: tuple[object, ...]
) -> None:
    """Each layer overrides the one below it, and the origin names the layer that won."""
    in_file, in_env, in_flag = given
    path = write(tmp_path, f"{key} = {in_file}\n")
    attr = next(s.attr for s in SETTINGS if s.key == key)
    flag = next(s.flag for s in SETTINGS if s.key == key)
    env = {f"TELLTALE_AGENT_{key.upper()}": in_env}

    config = load({"config": str(path)}, default_path=tmp_path / "none")
    assert (getattr(config, attr), config.origin(key)) == (expected[0], f"file {path}")
    config = load({"config": str(path)}, env, default_path=tmp_path / "none")
    assert (getattr(config, attr), config.origin(key)) == (expected[1], f"env TELLTALE_AGENT_{key.upper()}")
    config = load({"config": str(path), key: in_flag}, env, default_path=tmp_path / "none")
    flag_used = "--no-" + flag[2:] if in_flag is False else flag
    assert (getattr(config, attr), config.origin(key)) == (expected[2], f"flag {flag_used}")


def test_the_default_file_is_read_only_when_it_exists(tmp_path: Path) -> None:
    """/etc/telltale/agent.toml (here: a stand-in) applies when present and is silently skipped when not."""
    path = write(tmp_path, "spool_batches = 7\n")
    assert load(default_path=path).spool_batches == 7
    assert load(default_path=path).config_file == path
    assert load(default_path=tmp_path / "nothing.toml").config_file is None


def test_the_file_is_chosen_by_flag_over_environment_over_the_default(tmp_path: Path) -> None:
    """--config beats $TELLTALE_AGENT_CONFIG, which beats the default path."""
    default = write(tmp_path, "spool_batches = 1\n", "default.toml")
    from_env = write(tmp_path, "spool_batches = 2\n", "env.toml")
    from_flag = write(tmp_path, "spool_batches = 3\n", "flag.toml")
    env = {"TELLTALE_AGENT_CONFIG": str(from_env)}
    assert load(default_path=default).spool_batches == 1
    assert load({}, env, default_path=default).spool_batches == 2
    assert load({"config": str(from_flag)}, env, default_path=default).spool_batches == 3


@pytest.mark.parametrize(
    ("flags", "environ", "message"),
    [
        ({"config": "{missing}"}, {}, "--config: {missing}: no such file"),
        ({}, {"TELLTALE_AGENT_CONFIG": "{missing}"}, "TELLTALE_AGENT_CONFIG: {missing}: no such file"),
        ({"config": "{dir}"}, {}, "--config: {dir}: is not a file"),
    ],
)
def test_an_explicitly_named_file_that_is_missing_is_an_error(
    tmp_path: Path, flags: dict[str, str], environ: dict[str, str], message: str
) -> None:
    """Naming a configuration file that is not there fails instead of running on defaults."""
    names = {"missing": str(tmp_path / "missing.toml"), "dir": str(tmp_path)}
    flags = {k: v.format(**names) for k, v in flags.items()}
    environ = {k: v.format(**names) for k, v in environ.items()}
    with pytest.raises(ConfigError) as info:
        load(flags, environ, default_path=tmp_path / "none")
    assert str(info.value) == message.format(**names)


def test_an_empty_variable_counts_as_unset(tmp_path: Path) -> None:
    """TELLTALE_AGENT_X= (empty) leaves the file's value in place, and names no file."""
    path = write(tmp_path, "log_level = 'info'\n")
    env = {"TELLTALE_AGENT_LOG_LEVEL": "", "TELLTALE_AGENT_CONFIG": "", "TELLTALE_AGENT_NOPE": ""}
    assert load({}, env, default_path=path).log_level == "info"


def test_relative_paths_in_the_file_are_relative_to_the_file(tmp_path: Path) -> None:
    """A relative path in the file does not depend on the agent's working directory; one in a flag does."""
    path = write(tmp_path, 'socket = "run/a.sock"\nstate_dir = "state"\n')
    config = load({"config": str(path)}, default_path=tmp_path / "none")
    assert (config.socket_path, config.state_dir) == (tmp_path / "run/a.sock", tmp_path / "state")
    config = load({"config": str(path), "state_dir": "here"}, default_path=tmp_path / "none")
    assert config.state_dir == Path("here")


# -- errors name the setting and its source --------------------------------------------------------

# key, bad TOML value, bad text value (environment and flag), what the message says
INVALID = [
    ("spool_batches", '"x"', "x", "expected a positive integer, got 'x'"),
    ("spool_batches", "0", "-3", "expected a positive integer"),
    ("spool_batches", "1.5", "1.5", "expected a positive integer"),
    ("spool_bytes", '"12 parsecs"', "12 parsecs", "expected a size such as"),
    ("spool_bytes", "0", "0KiB", "expected a positive"),
    ("host_state", '"yes"', "maybe", "expected "),
    ("plaintext", "1", "sure", "expected "),
    ("host_state_poll_interval", "0", "0", "expected a positive number of seconds"),
    ("host_state_poll_interval", '"10"', "nan", "expected a positive number of seconds"),
    ("enforcement", '"maybe"', "maybe", "expected one of 'auto', 'on', 'off', got 'maybe'"),
    ("log_level", '"loud"', "loud", "expected one of 'debug', 'info', 'warning', 'error'"),
    ("controllers", '"127.0.0.1:1"', ",", "controller"),
    ("socket", "7", "", "expected a path"),
]


@pytest.mark.parametrize(("key", "in_file", "in_text", "message"), INVALID)
def test_every_bad_value_is_reported_with_its_setting_and_source(
    tmp_path: Path, key: str, in_file: str, in_text: str, message: str
) -> None:
    """The same mistake in the file, the environment or a flag names that file and key, variable, or flag."""
    setting = next(s for s in SETTINGS if s.key == key)
    path = write(tmp_path, f"{key} = {in_file}\n")
    none = tmp_path / "none"
    with pytest.raises(ConfigError, match=message) as info:
        load({"config": str(path)}, default_path=none)
    assert str(info.value).startswith(f"{path}: {key}: ")
    if in_text:
        with pytest.raises(ConfigError, match=message) as info:
            load({}, {setting.env: in_text}, default_path=none)
        assert str(info.value).startswith(f"{setting.env}: ")
    flag_value: object = [in_text] if key == "controllers" else in_text
    with pytest.raises(ConfigError, match=message) as info:
        load({key: flag_value}, default_path=none)
    assert str(info.value).startswith(f"{setting.flag}: ")


def test_a_bad_value_is_an_error_even_when_a_higher_layer_overrides_it(tmp_path: Path) -> None:
    """A broken file stays an error: it would bite as soon as the override is removed."""
    path = write(tmp_path, "spool_batches = 'x'\n")
    with pytest.raises(ConfigError, match=f"{path}: spool_batches"):
        load({"config": str(path), "spool_batches": "5"}, default_path=tmp_path / "none")


def test_an_unknown_key_in_the_file_is_rejected(tmp_path: Path) -> None:
    """A misspelt key fails loudly and lists the known ones."""
    path = write(tmp_path, "spool_batchs = 10\n")
    with pytest.raises(ConfigError, match="unknown setting") as info:
        load({"config": str(path)}, default_path=tmp_path / "none")
    assert str(info.value).startswith(f"{path}: spool_batchs: unknown setting")
    assert "spool_batches" in str(info.value)


def test_a_table_in_the_file_is_an_unknown_key(tmp_path: Path) -> None:
    """The file is flat: an [agent] table is not silently ignored."""
    path = write(tmp_path, "[agent]\nspool_batches = 10\n")
    with pytest.raises(ConfigError, match=f"{path}: agent: unknown setting"):
        load({"config": str(path)}, default_path=tmp_path / "none")


def test_an_unknown_agent_variable_is_rejected(tmp_path: Path) -> None:
    """A misspelt TELLTALE_AGENT_* variable fails loudly instead of being ignored."""
    with pytest.raises(ConfigError, match=r"^TELLTALE_AGENT_SPOOL_BATCH: unknown setting"):
        load({}, {"TELLTALE_AGENT_SPOOL_BATCH": "3"}, default_path=tmp_path / "none")


def test_a_file_that_is_not_toml_names_the_file_and_the_line(tmp_path: Path) -> None:
    """A syntax error points at the file and where in it."""
    path = write(tmp_path, "spool_batches = 1\nlog_level = \n")
    with pytest.raises(ConfigError, match=r"not valid TOML: .*line 2") as info:
        load({"config": str(path)}, default_path=tmp_path / "none")
    assert str(info.value).startswith(f"{path}: ")


@pytest.mark.parametrize(
    ("source", "where"),
    [("file", "{path}: controllers"), ("env", "TELLTALE_AGENT_CONTROLLERS"), ("flag", "--controller")],
)
def test_validation_names_where_an_unusable_controller_came_from(
    tmp_path: Path, source: str, where: str
) -> None:
    """validate() blames the file, variable or flag that gave a non-loopback plaintext controller."""
    path = write(
        tmp_path, "plaintext = true\n" + ("controllers = ['10.0.0.5:7443']\n" if source == "file" else "")
    )
    flags: dict[str, Any] = {"config": str(path)}
    env = {"TELLTALE_AGENT_CONTROLLERS": "10.0.0.5:7443"} if source == "env" else {}
    if source == "flag":
        flags["controllers"] = ["10.0.0.5:7443"]
    config = load(flags, env, default_path=tmp_path / "none")
    with pytest.raises(ConfigError, match="not a loopback address") as info:
        config.validate()
    assert str(info.value).startswith(where.format(path=path) + ": 10.0.0.5:7443")


def test_validation_checks_ranges_of_a_config_built_directly(tmp_path: Path) -> None:
    """An AgentConfig made in code gets the same range checks, named by flag."""
    config = AgentConfig(plaintext=True, spool_bytes=0, socket_path=tmp_path / "a.sock")
    with pytest.raises(ConfigError, match=r"^--spool-bytes: expected a positive integer, got 0"):
        config.validate()


# -- sizes -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4096", 4096),
        ("1B", 1),
        ("512KiB", 512 * 1024),
        ("512k", 512 * 1024),
        ("256MiB", 256 * 2**20),
        ("256 mib", 256 * 2**20),
        ("1.5GiB", 3 * 2**29),
        ("2G", 2 * 2**30),
        ("1TiB", 2**40),
        ("10kB", 10_000),
        ("3MB", 3_000_000),
        ("1GB", 10**9),
    ],
)
def test_sizes_accept_binary_and_decimal_units(text: str, size: int) -> None:
    """Sizes read as bytes, KiB/MiB/GiB/TiB (and K/M/G/T) as powers of 1024, kB/MB/GB/TB of 1000."""
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "MiB", "-1MiB", "1 parsec", "0", "0.1B", "1e3", "9" * 400 + "TiB"])
def test_sizes_that_are_not_positive_byte_counts_are_refused(text: str) -> None:
    """Nonsense, zero and sub-byte sizes are errors."""
    with pytest.raises(ValueError, match="expected a"):
        parse_size(text)


@pytest.mark.parametrize("size", [1, 1000, 1024, 1536, 256 * 2**20, 3 * 2**30, 2**40 + 1])
def test_a_formatted_size_reads_back_to_the_same_bytes(size: int) -> None:
    """format_size gives an exact, readable form."""
    assert parse_size(format_size(size)) == size


def test_spool_bytes_may_be_a_plain_integer_in_the_file(tmp_path: Path) -> None:
    """In TOML, a number of bytes or a string with a unit both work."""
    path = write(tmp_path, "spool_bytes = 1048576\n")
    assert load({"config": str(path)}, default_path=tmp_path / "none").spool_bytes == 2**20


# -- telltale agent --print-config / --remove-enforcement ------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No TELLTALE_AGENT_* variables from the environment running the tests."""
    for name in list(os.environ):
        if name.startswith("TELLTALE_AGENT_"):
            monkeypatch.delenv(name)


def test_print_config_shows_every_value_and_where_it_came_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, clean_env: None
) -> None:
    """The output is TOML that loads back to the same configuration, each line commented with its origin."""
    path = write(tmp_path, "plaintext = true\nspool_bytes = '1GiB'\nenforcement = 'off'\n")
    monkeypatch.setenv("TELLTALE_AGENT_SPOOL_BATCHES", "12")
    args = [
        "--log-level",
        "info",
        "agent",
        "--config",
        str(path),
        "--print-config",
        "--controller",
        "[::1]:9",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    lines = {line.split(" = ")[0]: line for line in out.splitlines() if " = " in line}
    assert set(lines) == {s.key for s in SETTINGS}
    assert lines["spool_bytes"] == f'spool_bytes = "1GiB"  # file {path}'
    assert lines["spool_batches"] == "spool_batches = 12  # env TELLTALE_AGENT_SPOOL_BATCHES"
    assert lines["controllers"] == 'controllers = ["[::1]:9"]  # flag --controller'
    assert lines["log_level"] == 'log_level = "info"  # flag --log-level'
    assert lines["host_state"] == "host_state = true  # default"
    assert f"# Configuration file: {path}" in out

    printed = write(tmp_path, out, "printed.toml")
    monkeypatch.delenv("TELLTALE_AGENT_SPOOL_BATCHES")
    again = load({"config": str(printed)}, default_path=tmp_path / "none")
    assert again == load_config(
        {"config": str(path), "controllers": ["[::1]:9"], "spool_batches": "12", "log_level": "info"},
        {},
        default_path=tmp_path / "none",
    )
    assert tomllib.loads(out)["spool_bytes"] == "1GiB"


def test_render_config_of_the_defaults_is_valid_toml() -> None:
    """Even with nothing configured, the rendering loads as TOML."""
    assert tomllib.loads(render_config(AgentConfig()))["spool_batches"] == 4096


def test_print_config_of_an_unusable_configuration_prints_it_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], clean_env: None
) -> None:
    """An operator sees the values and why they cannot be used; scripts see a failure status."""
    path = write(tmp_path, "controllers = ['10.0.0.5:7443']\nplaintext = true\n")
    assert main(["agent", "--config", str(path), "--print-config"]) == 2
    captured = capsys.readouterr()
    assert 'controllers = ["10.0.0.5:7443"]' in captured.out
    assert f"{path}: controllers: 10.0.0.5:7443 is not a loopback address" in captured.err


def test_the_agent_refuses_to_start_with_a_bad_setting_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, clean_env: None
) -> None:
    """A configuration error exits 2 with one line naming the variable, before anything starts."""
    monkeypatch.setenv("TELLTALE_AGENT_HOST_STATE_POLL_INTERVAL", "soon")
    assert main(["agent", "--config", str(write(tmp_path, ""))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("telltale: TELLTALE_AGENT_HOST_STATE_POLL_INTERVAL: expected a positive number")


def test_remove_enforcement_prints_what_was_removed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--remove-enforcement calls enforce.remove_enforcement (faked: the host's nftables are not touched)."""
    calls: list[None] = []

    def fake() -> str:
        calls.append(None)
        return "removed table inet telltale"

    monkeypatch.setattr(enforce, "remove_enforcement", fake)
    # It reads no configuration: a broken one must not stand in the way of removing the rules.
    monkeypatch.setenv("TELLTALE_AGENT_SPOOL_BATCHES", "broken")
    assert main(["agent", "--remove-enforcement"]) == 0
    assert calls == [None]
    assert capsys.readouterr().out == "removed table inet telltale\n"


def test_remove_enforcement_reports_a_failure_and_exits_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure to remove the rules is one line on stderr and status 1."""

    def fake() -> str:
        raise enforce.EnforcementError("cannot remove table inet telltale: not permitted")

    monkeypatch.setattr(enforce, "remove_enforcement", fake)
    assert main(["agent", "--remove-enforcement"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "telltale: cannot remove table inet telltale: not permitted\n"


def test_print_config_and_remove_enforcement_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    """Asking for both is a usage error."""
    with pytest.raises(SystemExit) as info:
        main(["agent", "--print-config", "--remove-enforcement"])
    assert info.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


# -- sd_notify -------------------------------------------------------------------------------------


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path (unix socket paths are limited to 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="tt-") as name:
        yield Path(name)


def receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(10)
    return sock


def test_notify_sends_the_state_to_a_path_socket(short_dir: Path) -> None:
    """With $NOTIFY_SOCKET naming a socket file, the state arrives as one datagram."""
    path = str(short_dir / "notify")
    with receiver(path) as sock:
        assert notify.notify("READY=1", {"NOTIFY_SOCKET": path})
        assert notify.notify("STATUS=serving\nSTOPPING=1", {"NOTIFY_SOCKET": path})
        assert sock.recv(4096) == b"READY=1"
        assert sock.recv(4096) == b"STATUS=serving\nSTOPPING=1"


def test_notify_reaches_an_abstract_socket_named_with_an_at_sign() -> None:
    """'@name' is the abstract-namespace socket 'name', as systemd passes it."""
    name = f"telltale-test-{uuid.uuid4().hex}"
    with receiver("\0" + name) as sock:
        assert notify.notify("READY=1", {"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"READY=1"


def test_notify_uses_the_process_environment_by_default(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Called with the state only, it reads $NOTIFY_SOCKET from os.environ."""
    path = str(short_dir / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    with receiver(path) as sock:
        assert notify.notify("READY=1")
        assert sock.recv(4096) == b"READY=1"


@pytest.mark.parametrize("value", [None, "", "@", "relative/path", "vsock:2:1234"])
def test_notify_without_a_usable_socket_does_nothing(value: str | None) -> None:
    """Outside a service manager (or with an address it cannot use) it returns False."""
    environ = {} if value is None else {"NOTIFY_SOCKET": value}
    assert notify.notify("READY=1", environ) is False


def test_notify_never_raises_when_nobody_listens(short_dir: Path) -> None:
    """A stale or absent socket makes it return False, not fail the agent."""
    assert notify.notify("READY=1", {"NOTIFY_SOCKET": str(short_dir / "gone")}) is False
    assert notify.notify("READY=1", {"NOTIFY_SOCKET": "@telltale-nobody-" + uuid.uuid4().hex}) is False
    assert notify.notify("READY=1", {"NOTIFY_SOCKET": "/" + "x" * 200}) is False


# -- the shipped example ---------------------------------------------------------------------------

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "agent.toml"


def test_the_example_configuration_documents_every_setting_with_its_default(tmp_path: Path) -> None:
    """deploy/agent.toml loads as is, and uncommenting every setting gives exactly the defaults."""
    text = EXAMPLE.read_text()
    assert load({"config": str(EXAMPLE)}, default_path=tmp_path / "none") == AgentConfig()
    uncommented = re.sub(r"^# (\w+ = )", r"\1", text, flags=re.MULTILINE)
    keys = re.findall(r"^(\w+) = ", uncommented, flags=re.MULTILINE)
    assert sorted(keys) == sorted(s.key for s in SETTINGS)
    path = write(tmp_path, uncommented)
    config = load({"config": str(path)}, default_path=tmp_path / "none")
    assert config == AgentConfig()
    assert all(config.origin(s.key) == f"file {path}" for s in SETTINGS)
