"""Settings of the node agent and where each comes from.

Every setting can be given in four places; a later one overrides an earlier one:

    built-in default  <  TOML file  <  environment (TELLTALE_AGENT_<KEY>)  <  command-line flag

The TOML file is the one named by `--config` or `$TELLTALE_AGENT_CONFIG`, else
`/etc/telltale/agent.toml` when it exists. Every value is checked where it is read, and an error
names the setting and its source ("agent.toml: spool_batches: …", "TELLTALE_AGENT_SPOOL_BATCHES: …",
"--spool-batches: …"), so an operator knows which of the four places to fix. Unknown keys in the file
and unknown `TELLTALE_AGENT_*` variables are errors: a misspelt setting must not be silently ignored.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast, get_args

from telltale import pki
from telltale.netutil import is_loopback_host, split_host_port
from telltale.nodeagent.defaults import DEFAULT_SOCKET, DEFAULT_STATE_DIR

DEFAULT_CONFIG_PATH = Path("/etc/telltale/agent.toml")
ENV_PREFIX = "TELLTALE_AGENT_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"
DEFAULT_CONTROLLER = "127.0.0.1:7443"
DEFAULT_SPOOL_BATCHES = 4096
DEFAULT_SPOOL_BYTES = 256 * 1024**2
DEFAULT_HOST_STATE_POLL_S = 10.0
MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes; keep a margin
DEFAULT_TLS_DIR = Path("/etc/telltale/tls")

Enforcement = Literal["auto", "on", "off"]
LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[str, ...] = get_args(LogFormat)
ENFORCEMENT_MODES: tuple[str, ...] = get_args(Enforcement)
LOG_LEVELS: tuple[str, ...] = get_args(LogLevel)

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tib": 1024**4,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
}


class ConfigError(ValueError):
    """The agent configuration is unusable; the message names the setting and where it was given."""


@dataclass(frozen=True)
class Setting:
    """One agent setting: its TOML key, environment variable, flag and how its value is read."""

    key: str  # TOML key; also the key of AgentConfig.origins
    attr: str  # AgentConfig attribute
    kind: Literal["addresses", "path", "bool", "count", "size", "seconds", "choice"]
    help: str
    choices: tuple[str, ...] = ()
    flag_name: str = ""  # when it is not --key-with-dashes
    metavar: str = ""

    @property
    def env(self) -> str:
        """The environment variable that sets it."""
        return ENV_PREFIX + self.key.upper()

    @property
    def flag(self) -> str:
        """The command-line flag that sets it."""
        return self.flag_name or "--" + self.key.replace("_", "-")


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "controllers",
        "controllers",
        "addresses",
        "controller addresses HOST:PORT, tried in order for failover "
        "(TOML: a list; environment: comma-separated; flag: repeatable)",
        flag_name="--controller",
        metavar="HOST:PORT[,…]",
    ),
    Setting("socket", "socket_path", "path", "unix socket the shim reports to", metavar="PATH"),
    Setting("state_dir", "state_dir", "path", "directory of the node identity and the spool", metavar="PATH"),
    Setting("plaintext", "plaintext", "bool", "talk to the controller without TLS (loopback only)"),
    Setting(
        "tls_ca", "tls_ca", "path", "CA certificate that signed the controllers' certificates", metavar="PATH"
    ),
    Setting(
        "tls_cert",
        "tls_cert",
        "path",
        "this node's certificate (`telltale pki issue node`); its identity is the node id",
        metavar="PATH",
    ),
    Setting("tls_key", "tls_key", "path", "the private key of tls_cert", metavar="PATH"),
    Setting("spool_batches", "spool_batches", "count", "most unacknowledged batches kept", metavar="N"),
    Setting(
        "spool_bytes",
        "spool_bytes",
        "size",
        "most bytes of unacknowledged batches kept (suffixes: KiB, MiB, GiB, or kB, MB, GB)",
        metavar="SIZE",
    ),
    Setting("host_state", "host_state", "bool", "observe the host's network and kernel state"),
    Setting(
        "host_state_poll_interval",
        "host_state_poll_interval",
        "seconds",
        "seconds between two samples of the host state",
        metavar="SECONDS",
    ),
    Setting(
        "enforcement",
        "enforcement",
        "choice",
        "nftables enforcement: auto (when root and libnftables allow it), on (refuse to start "
        "without it), off (never touch nftables)",
        choices=ENFORCEMENT_MODES,
    ),
    Setting("log_level", "log_level", "choice", "log level", choices=LOG_LEVELS),
    Setting("log_format", "log_format", "choice", "log lines: text, or json lines", choices=LOG_FORMATS),
)
SETTINGS_BY_KEY = {s.key: s for s in SETTINGS}


@dataclass
class AgentConfig:
    """Settings of the node agent.

    `origins` maps a setting's TOML key to where its value came from ("file PATH", "env NAME",
    "flag --NAME"); a key that is absent holds its default. `load_config` fills it; errors raised by
    `validate` use it to name the source of a bad value.
    """

    controllers: list[str] = field(default_factory=lambda: [DEFAULT_CONTROLLER])
    socket_path: Path = DEFAULT_SOCKET
    state_dir: Path = DEFAULT_STATE_DIR
    plaintext: bool = False
    tls_ca: Path = DEFAULT_TLS_DIR / "ca.crt"
    tls_cert: Path = DEFAULT_TLS_DIR / "node.crt"
    tls_key: Path = DEFAULT_TLS_DIR / "node.key"
    spool_batches: int = DEFAULT_SPOOL_BATCHES
    spool_bytes: int = DEFAULT_SPOOL_BYTES
    host_state: bool = True
    host_state_poll_interval: float = DEFAULT_HOST_STATE_POLL_S
    enforcement: Enforcement = "auto"
    log_level: LogLevel = "warning"
    log_format: LogFormat = "text"
    config_file: Path | None = field(default=None, compare=False)
    origins: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def origin(self, key: str) -> str:
        """Where the setting `key` came from: "default", "file PATH", "env NAME" or "flag --NAME"."""
        return self.origins.get(key, "default")

    def where(self, key: str) -> str:
        """How an error message names the setting `key`, given where its value came from."""
        origin = self.origin(key)
        kind, _, name = origin.partition(" ")
        if kind == "file":
            return f"{name}: {key}"
        if kind in ("env", "flag"):
            return name
        return SETTINGS_BY_KEY[key].flag

    def validate(self) -> None:
        """Raise ConfigError naming the first unusable setting and where it was given.

        Checks the value ranges (for an AgentConfig built directly rather than by `load_config`), that
        every controller address is HOST:PORT, that plain text is asked for explicitly and only
        towards controllers on loopback, and otherwise that the TLS files are usable: a node
        certificate with its key, and the CA (see `tls_material`).
        """
        for setting in SETTINGS:
            try:
                _check(setting, getattr(self, setting.attr))
            except _Invalid as exc:
                raise ConfigError(f"{self.where(setting.key)}: {exc}") from None
        where = self.where("controllers")
        hosts = []
        for address in self.controllers:
            try:
                hosts.append((address, split_host_port(address)[0]))
            except ValueError:
                raise ConfigError(f"{where}: {address!r} is not HOST:PORT") from None
        if not self.plaintext:
            self.tls_material()
        else:
            for address, host in hosts:
                if not is_loopback_host(host):
                    raise ConfigError(
                        f"{where}: {address} is not a loopback address; plaintext (no encryption) "
                        "is only allowed to a controller on this host"
                    )
        if len(str(self.socket_path)) > MAX_SOCKET_PATH:
            where = self.where("socket")
            raise ConfigError(f"{where}: {self.socket_path} is too long for a unix socket path")

    def tls_material(self) -> TlsMaterial:
        """The CA, certificate and key files' contents and the node id the certificate names.

        Raises ConfigError naming the setting at fault: a missing file (saying how to configure TLS
        or ask for plaintext), a key that does not belong to the certificate, a certificate that is
        not a node certificate.
        """
        contents = []
        for key in ("tls_ca", "tls_cert", "tls_key"):
            path = getattr(self, key)
            try:
                contents.append(path.read_bytes())
            except FileNotFoundError:
                raise ConfigError(
                    f"TLS is not configured: {self.where(key)}: {path}: no such file. Give the CA, this "
                    "node's certificate and key (tls_ca, tls_cert, tls_key; `telltale pki issue node`), "
                    "or pass --plaintext (plaintext = true, TELLTALE_AGENT_PLAINTEXT=1) to talk to a "
                    "controller on loopback without encryption (for a local demo or tests only)"
                ) from None
            except OSError as exc:
                raise ConfigError(f"{self.where(key)}: {path}: {exc.strerror or exc}") from None
        ca, cert, key = contents
        if not pki.is_pem_certificate(ca):
            raise ConfigError(f"{self.where('tls_ca')}: {self.tls_ca} holds no PEM certificate")
        problem = pki.check_pair(cert, key)
        if problem:
            raise ConfigError(f"{self.where('tls_cert')}/{self.where('tls_key')}: {problem}")
        identity = pki.identity_of_pem(cert)
        if identity is None or identity.kind != "node":
            raise ConfigError(
                f"{self.where('tls_cert')}: {self.tls_cert} is not a node certificate "
                f"(issue one with `telltale pki issue node --name NODE_ID`)"
            )
        return TlsMaterial(ca=ca, cert=cert, key=key, node_id=identity.name)


@dataclass(frozen=True)
class TlsMaterial:
    """What the agent presents and trusts, read once at startup; `node_id` is the certificate's."""

    ca: bytes
    cert: bytes
    key: bytes
    node_id: str


class _Invalid(ValueError):
    """A value is unusable; the message says what was expected (the caller adds where)."""


def _check(setting: Setting, value: object) -> None:
    """Raise _Invalid if an already typed `value` is outside what `setting` allows."""
    kind = setting.kind
    if kind == "addresses" and not value:
        raise _Invalid("at least one controller address is needed")
    if kind == "path" and not str(value):
        raise _Invalid("expected a path, got ''")
    if kind in ("count", "size") and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
        raise _Invalid(f"expected a positive integer, got {value!r}")
    if kind == "seconds" and (
        not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value < math.inf
    ):
        raise _Invalid(f"expected a positive number of seconds, got {value!r}")
    if kind == "choice" and value not in setting.choices:
        raise _Invalid(f"expected one of {', '.join(map(repr, setting.choices))}, got {value!r}")


def parse_size(text: str) -> int:
    """Bytes in `text`: a number with an optional unit.

    Binary units: K, KiB, M, MiB, G, GiB, T, TiB (powers of 1024); decimal units: kB, MB, GB, TB
    (powers of 1000); B or none: bytes. Units are case-insensitive; fractions round down
    ("1.5GiB"). Raises ValueError, saying what was expected, unless the result is at least one byte.
    """
    match = _SIZE.fullmatch(text)
    unit = _SIZE_UNITS.get(match.group(2).lower()) if match else None
    if match is None or unit is None:
        raise _Invalid(f"expected a size such as 4096, 512KiB or 256MiB, got {text!r}")
    scaled = float(match.group(1)) * unit
    if not math.isfinite(scaled):
        raise _Invalid(f"expected a size such as 4096, 512KiB or 256MiB, got {text!r}")
    size = int(scaled)
    if size <= 0:
        raise _Invalid(f"expected a positive size, got {text!r}")
    return size


def format_size(size: int) -> str:
    """`size` bytes as the shortest exact binary-unit string parse_size reads back ("256MiB")."""
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        scale = _SIZE_UNITS[unit.lower()]
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return str(size)


def _parse(setting: Setting, raw: object, *, text: bool, base: Path | None = None) -> object:
    """Turn a raw value into the setting's type; raise _Invalid saying what was expected.

    `text` is true for values from the environment or flags (strings; a flag may also pass a bool or a
    list of strings), false for TOML values (typed: a TOML string is not taken as a number). Relative
    paths are resolved against `base` when one is given (the configuration file's directory).
    """
    kind = setting.kind
    value: object
    if kind == "addresses":
        items = [raw] if isinstance(raw, str) and text else raw
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise _Invalid(f'expected a list of "HOST:PORT" strings, got {raw!r}')
        value = [a.strip() for item in cast(list[str], items) for a in item.split(",") if a.strip()]
    elif kind == "path":
        if not isinstance(raw, str) or not raw:
            raise _Invalid(f"expected a path, got {raw!r}")
        value = base / raw if base is not None and not Path(raw).is_absolute() else Path(raw)
    elif kind == "bool":
        if isinstance(raw, bool):
            value = raw
        elif text and isinstance(raw, str) and raw.strip().lower() in _TRUE + _FALSE:
            value = raw.strip().lower() in _TRUE
        else:
            expected = "true or false" if not text else "one of 1, true, yes, on, 0, false, no, off"
            raise _Invalid(f"expected {expected}, got {raw!r}")
    elif kind == "count":
        value = raw
        if text and isinstance(raw, str):
            try:
                value = int(raw.strip())
            except ValueError:
                raise _Invalid(f"expected a positive integer, got {raw!r}") from None
    elif kind == "size":
        value = parse_size(raw) if isinstance(raw, str) else raw
    elif kind == "seconds":
        value = raw
        if text and isinstance(raw, str):
            try:
                value = float(raw.strip())
            except ValueError:
                raise _Invalid(f"expected a positive number of seconds, got {raw!r}") from None
        elif isinstance(raw, int) and not isinstance(raw, bool):
            value = float(raw)
    else:
        value = raw.strip().lower() if text and isinstance(raw, str) else raw
    _check(setting, value)
    return value


def _flag_values(flags: Mapping[str, object] | argparse.Namespace) -> Mapping[str, object]:
    return vars(flags) if isinstance(flags, argparse.Namespace) else flags


def _config_path(
    flags: Mapping[str, object], environ: Mapping[str, str], default_path: Path | None
) -> Path | None:
    """The configuration file to read, or None; raise ConfigError if one named explicitly is missing."""
    for name, given in (("--config", flags.get("config")), (CONFIG_ENV, environ.get(CONFIG_ENV))):
        if given is None or given == "":
            continue
        path = Path(str(given))
        if not path.is_file():
            reason = "is not a file" if path.exists() else "no such file"
            raise ConfigError(f"{name}: {path}: {reason}")
        return path
    if default_path is not None and default_path.is_file():
        return default_path
    return None


def _read_file(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def load_config(
    flags: Mapping[str, object] | argparse.Namespace,
    environ: Mapping[str, str],
    *,
    default_path: Path | None = DEFAULT_CONFIG_PATH,
) -> AgentConfig:
    """Build the agent configuration from defaults, the TOML file, the environment and flags.

    `flags` maps setting keys (and "config", the file to read) to values as the command line gave
    them: strings, a bool for on/off settings, a list of strings for "controllers"; None or absent
    means "not given". An argparse.Namespace is read the same way (unrelated attributes are ignored).
    `environ` is usually os.environ; an empty variable counts as unset. `default_path` is read only
    if it exists (None: never).

    Raises ConfigError, naming the setting and its source, for: an explicitly named file that is
    missing, unreadable or not valid TOML; an unknown key in the file or unknown TELLTALE_AGENT_*
    variable; any value of the wrong type or range, in any layer (even one a later layer overrides).
    Does not call `validate()`: the caller does, so a configuration can be shown before it is judged.
    """
    values = _flag_values(flags)
    config = AgentConfig()
    config.config_file = _config_path(values, environ, default_path)
    layers: list[tuple[str, Setting, object, bool, Path | None]] = []
    if config.config_file is not None:
        path = config.config_file
        for key, raw in _read_file(path).items():
            setting = SETTINGS_BY_KEY.get(key)
            if setting is None:
                known = ", ".join(SETTINGS_BY_KEY)
                raise ConfigError(f"{path}: {key}: unknown setting (known settings: {known})")
            layers.append((f"file {path}", setting, raw, False, path.parent))
    known_env = {s.env: s for s in SETTINGS}
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV or environ[name] == "":
            continue
        if name not in known_env:
            names = ", ".join(known_env)
            raise ConfigError(f"{name}: unknown setting (known variables: {CONFIG_ENV}, {names})")
    for setting in SETTINGS:
        if environ.get(setting.env, "") != "":
            layers.append((f"env {setting.env}", setting, environ[setting.env], True, None))
    for setting in SETTINGS:
        raw = values.get(setting.key)
        if raw is not None and raw != []:
            flag = "--no-" + setting.flag[2:] if raw is False else setting.flag
            layers.append((f"flag {flag}", setting, raw, True, None))
    for origin, setting, raw, text, base in layers:
        config.origins[setting.key] = origin
        try:
            setattr(config, setting.attr, _parse(setting, raw, text=text, base=base))
        except _Invalid as exc:
            raise ConfigError(f"{config.where(setting.key)}: {exc}") from None
    return config


def toml_value(setting: Setting, value: object) -> str:
    """`value` of `setting` written as a TOML value (sizes with a binary unit when exact)."""
    if setting.kind == "addresses":
        return "[" + ", ".join(json.dumps(a, ensure_ascii=False) for a in cast(list[str], value)) + "]"
    if setting.kind == "bool":
        return "true" if value else "false"
    if setting.kind == "size":
        return json.dumps(format_size(cast(int, value)))
    if setting.kind in ("count", "seconds"):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)


def render_config(config: AgentConfig) -> str:
    """The effective configuration as TOML that `load_config` reads back to the same values.

    Each line ends with a comment saying where the value came from (default, file, env or flag).
    """
    if config.config_file is None:
        source = f"none ({DEFAULT_CONFIG_PATH} is read when it exists)"
    else:
        source = str(config.config_file)
    lines = [
        "# Effective telltale agent configuration.",
        "# Precedence: default < file < environment (TELLTALE_AGENT_*) < flag.",
        f"# Configuration file: {source}",
    ]
    for setting in SETTINGS:
        value = toml_value(setting, getattr(config, setting.attr))
        lines.append(f"{setting.key} = {value}  # {config.origin(setting.key)}")
    return "\n".join(lines) + "\n"
