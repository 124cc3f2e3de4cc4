"""Entry point of the `telltale` command: argument parsing and dispatch."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import telltale
from telltale import logs
from telltale.cli import alerts, catalog, nodes, pki, policy, token, workloads
from telltale.cli.client import ApiCredentials, CliError, use_credentials
from telltale.nodeagent import config as agent_config
from telltale.nodeagent.defaults import DEFAULT_SOCKET

EPILOG = """\
Typical local use (plaintext on loopback):
  telltale controller --plaintext --data-dir ./data
  telltale agent --plaintext --socket ./agent.sock --state-dir ./agent
  telltale run --app shop --socket ./agent.sock -- python3 app.py
  telltale alerts list --plaintext
"""


def _controller(args: argparse.Namespace) -> int:
    from telltale.controller.etcd import EtcdError
    from telltale.controller.server import ConfigError, ControllerConfig, serve

    config = ControllerConfig(
        listen=args.listen,
        data_dir=Path(args.data_dir),
        etcd_endpoints=[e for item in args.etcd_endpoints for e in item.split(",") if e],
        etcd_prefix=args.etcd_prefix,
        etcd_ca=Path(args.etcd_ca) if args.etcd_ca else None,
        etcd_cert=Path(args.etcd_cert) if args.etcd_cert else None,
        etcd_key=Path(args.etcd_key) if args.etcd_key else None,
        etcd_user=args.etcd_user,
        etcd_password_file=Path(args.etcd_password_file) if args.etcd_password_file else None,
        etcd_password=os.environ.get("TELLTALE_ETCD_PASSWORD", ""),
        lease_ttl=args.lease_ttl,
        retention_closed_age_s=args.retention_closed_age * 86_400,
        retention_max_alerts=args.retention_max_alerts,
        plaintext=args.plaintext,
        geoip_database=Path(args.geoip_database) if args.geoip_database else None,
        country_overrides=Path(args.country_overrides) if args.country_overrides else None,
        metrics_listen=args.metrics_listen,
        tls_cert=Path(args.tls_cert) if args.tls_cert else None,
        tls_key=Path(args.tls_key) if args.tls_key else None,
        tls_ca=Path(args.tls_ca) if args.tls_ca else None,
        agent_listen=args.agent_listen,
        bootstrap_token_file=Path(args.bootstrap_token_file) if args.bootstrap_token_file else None,
    )
    try:
        asyncio.run(serve(config))
    except (ConfigError, EtcdError) as exc:
        raise CliError(str(exc), code=2) from None
    return 0


def _agent(args: argparse.Namespace) -> int:
    """Run the agent, or with --print-config / --remove-enforcement do that and exit.

    Configuration errors exit with status 2 (the systemd unit does not restart on it).
    """
    if args.remove_enforcement:
        return _remove_enforcement()
    try:
        config = agent_config.load_config(args, os.environ)
        if args.print_config:
            print(agent_config.render_config(config), end="", flush=True)
        config.validate()
    except agent_config.ConfigError as exc:
        raise CliError(str(exc), code=2) from None
    if args.print_config:
        return 0
    logs.configure(config.log_level, config.log_format)

    from telltale.nodeagent.daemon import run_agent

    try:
        run_agent(config)
    except agent_config.ConfigError as exc:
        raise CliError(str(exc), code=2) from None
    return 0


def _remove_enforcement() -> int:
    """Delete the agent's nftables table; its message goes to stdout, a failure exits 1.

    Reads no configuration, so that a broken one cannot stand in the way of lifting the blocks.
    """
    from telltale.nodeagent.enforce import EnforcementError, remove_enforcement

    try:
        print(remove_enforcement())
    except EnforcementError as exc:
        raise CliError(str(exc), code=1) from None
    return 0


def _run(args: argparse.Namespace) -> int:
    from telltale.nodeagent.launch import exec_workload, new_workload
    from telltale.nodeagent.workload import DescriptorError

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise CliError("no command given: telltale run --app NAME -- COMMAND [ARGS…]", code=2)
    tags = {}
    for tag in args.tag:
        key, sep, value = tag.partition("=")
        if not sep or not key:
            raise CliError(f"--tag {tag!r}: use KEY=VALUE", code=2)
        tags[key] = value
    try:
        workload = new_workload(
            args.app,
            component=args.component,
            version=args.version,
            environment=args.env,
            policy=args.policy,
            tags=tags,
            command=command,
        )
        exec_workload(workload, command, Path(args.socket))
    except DescriptorError as exc:
        raise CliError(str(exc), code=2) from None


def _demo(args: argparse.Namespace) -> int:
    from telltale.demo import run_demo

    return run_demo(Path(args.workdir) if args.workdir else None, keep=args.keep)


def build_parser() -> argparse.ArgumentParser:
    """The whole command-line interface."""
    parser = argparse.ArgumentParser(
        prog="telltale",
        description="Runtime application security: observe workloads, raise alerts by policy.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"telltale {telltale.__version__}")
    parser.add_argument(
        "--log-level",
        choices=agent_config.LOG_LEVELS,
        help="daemon log level (default warning; the agent also reads it from its configuration)",
    )
    parser.add_argument(
        "--log-format",
        choices=logs.LOG_FORMATS,
        help="daemon log lines: text, or json (one object per line) (default text)",
    )
    sub = parser.add_subparsers(dest="command_name", metavar="COMMAND", required=True)

    _add_daemon_commands(sub)
    alerts.add_commands(sub)
    policy.add_commands(sub)
    catalog.add_commands(sub)
    nodes.add_commands(sub)
    workloads.add_commands(sub)
    token.add_commands(sub)
    pki.add_commands(sub)
    return parser


def _add_daemon_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """demo, controller, agent and run."""
    p = sub.add_parser(
        "demo", help="run the local demo: etcd, controller, agent and a workload that raises alerts"
    )
    p.add_argument("--workdir", default="", help="keep data and logs here (default: a temporary directory)")
    p.add_argument("--keep", action="store_true", help="do not delete the working directory at the end")
    p.set_defaults(func=_demo)

    p = sub.add_parser("controller", help="run a controller (API, agent streams, evaluation)")
    p.add_argument("--listen", default="127.0.0.1:7443", help="address to serve on (default %(default)s)")
    p.add_argument(
        "--data-dir",
        default="/var/lib/telltale/controller",
        help="state directory; holds the embedded etcd (default %(default)s)",
    )
    p.add_argument(
        "--etcd-endpoints",
        action="append",
        default=[],
        metavar="HOST:PORT[,…]",
        help="every member of the etcd cluster to use (http:// or https://) instead of an embedded etcd",
    )
    p.add_argument("--etcd-prefix", default="/telltale/v1/", help="key prefix in etcd (default %(default)s)")
    p.add_argument("--etcd-ca", metavar="PEM", help="CA of the etcd members' certificates (TLS to etcd)")
    p.add_argument("--etcd-cert", metavar="PEM", help="client certificate for etcd, with --etcd-key")
    p.add_argument("--etcd-key", metavar="PEM", help="private key of --etcd-cert")
    p.add_argument("--etcd-user", default="", help="etcd user (etcd authentication enabled)")
    p.add_argument(
        "--etcd-password-file",
        metavar="FILE",
        help="file holding the etcd user's password (else $TELLTALE_ETCD_PASSWORD)",
    )
    p.add_argument(
        "--lease-ttl",
        type=int,
        default=10,
        metavar="SECONDS",
        help="TTL of this replica's etcd lease: how soon others notice it died (default %(default)s)",
    )
    p.add_argument(
        "--retention-closed-age",
        type=float,
        default=30,
        metavar="DAYS",
        help="delete acknowledged and not-an-issue alerts not seen for this long (default %(default)s)",
    )
    p.add_argument(
        "--retention-max-alerts",
        type=int,
        default=100_000,
        metavar="N",
        help="keep at most N alerts, deleting the oldest, closed ones first (default %(default)s)",
    )
    p.add_argument(
        "--plaintext",
        action="store_true",
        help="serve without TLS and without authentication (loopback only; a demo or tests)",
    )
    p.add_argument(
        "--tls-cert", metavar="PATH", help="the controller's certificate (`telltale pki issue controller`)"
    )
    p.add_argument("--tls-key", metavar="PATH", help="the private key of --tls-cert")
    p.add_argument(
        "--tls-ca",
        metavar="PATH",
        help="CA of the node (and API client) certificates: agents must present one",
    )
    p.add_argument(
        "--agent-listen",
        default="",
        metavar="HOST:PORT",
        help="where agents connect with mutual TLS (default: the --listen host, port 7444)",
    )
    p.add_argument(
        "--bootstrap-token-file",
        metavar="PATH",
        help="when no API token exists, create an admin token and write it to PATH (mode 0600)",
    )
    p.add_argument(
        "--geoip-database",
        metavar="PATH",
        help="MaxMind-format country database for the restricted-countries rules "
        "(default: the offline table shipped with telltale)",
    )
    p.add_argument(
        "--country-overrides",
        metavar="FILE",
        help="YAML or CSV mapping networks to country codes, consulted first",
    )
    p.add_argument(
        "--metrics-listen",
        default="",
        metavar="HOST:PORT",
        help="serve Prometheus metrics on http://HOST:PORT/metrics (default: no metrics endpoint)",
    )
    # Also accepted before the subcommand; SUPPRESS keeps that value when the flag is absent here.
    p.add_argument("--log-level", choices=logs.LOG_LEVELS, default=argparse.SUPPRESS, help="log level")
    p.add_argument(
        "--log-format", choices=logs.LOG_FORMATS, default=argparse.SUPPRESS, help="log lines: text or json"
    )
    p.set_defaults(func=_controller)

    _add_agent_command(sub)

    p = sub.add_parser(
        "run",
        help="run a workload with the shim attached",
        usage="telltale run --app NAME [options] -- COMMAND [ARGS…]",
    )
    p.add_argument("--app", required=True, help="application the workload belongs to")
    p.add_argument("--component", default="", help="component of the application")
    p.add_argument("--version", default="", help="version of the component")
    p.add_argument("--env", default="", help="environment name, e.g. prod")
    p.add_argument("--policy", default="", help="evaluate with this policy instead of the application's")
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="label (repeatable)")
    p.add_argument("--socket", default=str(DEFAULT_SOCKET), help="agent socket (default %(default)s)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the command and its arguments, after --")
    p.set_defaults(func=_run)


AGENT_DESCRIPTION = f"""\
Run the node agent: shim intake, controller link, host state, enforcement.

Each setting comes from, in increasing precedence: its default, the TOML configuration file
(--config, ${agent_config.CONFIG_ENV}, else {agent_config.DEFAULT_CONFIG_PATH} if it exists), the
environment variable {agent_config.ENV_PREFIX}<SETTING> (an empty one counts as unset), and the flag.
`telltale agent --print-config` shows the result and where each value came from.
"""


def _add_agent_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The agent subcommand: one flag per setting of telltale.nodeagent.config, plus actions."""
    p = sub.add_parser(
        "agent",
        help="run the node agent (shim intake, controller link)",
        description=AGENT_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config",
        metavar="PATH",
        help=f"TOML configuration file (default {agent_config.DEFAULT_CONFIG_PATH} if it exists; "
        f"${agent_config.CONFIG_ENV})",
    )
    defaults = agent_config.AgentConfig()
    for setting in agent_config.SETTINGS:
        default = agent_config.toml_value(setting, getattr(defaults, setting.attr))
        where = f"default {default}; ${setting.env}"
        if setting.kind == "bool":
            p.add_argument(
                setting.flag,
                dest=setting.key,
                action=argparse.BooleanOptionalAction,
                help=f"{setting.help} ({where})",
            )
        elif setting.kind == "addresses":
            p.add_argument(
                setting.flag,
                dest=setting.key,
                action="append",
                metavar=setting.metavar,
                help=f"{setting.help} ({where})",
            )
        elif setting.key in ("log_level", "log_format"):
            # Also accepted before the subcommand (`telltale --log-level debug agent`): SUPPRESS keeps
            # that value when this flag is absent.
            p.add_argument(
                setting.flag,
                dest=setting.key,
                choices=setting.choices,
                default=argparse.SUPPRESS,
                help=f"{setting.help} ({where})",
            )
        else:
            p.add_argument(
                setting.flag,
                dest=setting.key,
                metavar="|".join(setting.choices) or setting.metavar,
                help=f"{setting.help} ({where})",
            )
    actions = p.add_mutually_exclusive_group()
    actions.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective configuration as TOML, with where each value came from, and exit "
        "(status 2 if it is unusable)",
    )
    actions.add_argument(
        "--remove-enforcement",
        action="store_true",
        help="delete the nftables rules the agent installed (e.g. after it was stopped) and exit; "
        "reads no configuration",
    )
    p.set_defaults(func=_agent)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status."""
    args = build_parser().parse_args(argv)
    use_credentials(ApiCredentials.from_args(args))
    logs.configure(args.log_level or "warning", args.log_format or "text")
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"telltale: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
