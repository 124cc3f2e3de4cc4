"""Entry point of the `telltale` command: argument parsing and dispatch."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import telltale
from telltale.cli import alerts, catalog, policy
from telltale.cli.client import CliError, default_controller, plaintext_from_env
from telltale.nodeagent.defaults import DEFAULT_SOCKET, DEFAULT_STATE_DIR

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
        plaintext=args.plaintext,
        geoip_database=Path(args.geoip_database) if args.geoip_database else None,
        country_overrides=Path(args.country_overrides) if args.country_overrides else None,
    )
    try:
        asyncio.run(serve(config))
    except (ConfigError, EtcdError) as exc:
        raise CliError(str(exc), code=2) from None
    return 0


def _agent(args: argparse.Namespace) -> int:
    from telltale.nodeagent.daemon import AgentConfig, ConfigError, run_agent

    config = AgentConfig(
        controllers=[c for item in args.controller for c in item.split(",") if c] or [default_controller()],
        socket_path=Path(args.socket),
        state_dir=Path(args.state_dir),
        plaintext=args.plaintext,
    )
    try:
        run_agent(config)
    except ConfigError as exc:
        raise CliError(str(exc), code=2) from None
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
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="daemon log level (default %(default)s)",
    )
    sub = parser.add_subparsers(dest="command_name", metavar="COMMAND", required=True)

    _add_daemon_commands(sub)
    alerts.add_commands(sub)
    policy.add_commands(sub)
    catalog.add_commands(sub)
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
        help="use this etcd cluster instead of an embedded one",
    )
    p.add_argument("--etcd-prefix", default="/telltale/v1/", help="key prefix in etcd (default %(default)s)")
    p.add_argument("--plaintext", action="store_true", help="serve without TLS (loopback only)")
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
    p.set_defaults(func=_controller)

    p = sub.add_parser("agent", help="run the node agent (shim intake, controller link)")
    p.add_argument(
        "--controller",
        action="append",
        default=[],
        metavar="HOST:PORT[,…]",
        help="controller address; repeat for failover (default: $TELLTALE_CONTROLLER or 127.0.0.1:7443)",
    )
    p.add_argument("--socket", default=str(DEFAULT_SOCKET), help="shim socket path (default %(default)s)")
    p.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR), help="node identity (default %(default)s)")
    p.add_argument(
        "--plaintext",
        action="store_true",
        default=plaintext_from_env(),
        help="talk to the controller without TLS (loopback only)",
    )
    p.set_defaults(func=_agent)

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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"telltale: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
