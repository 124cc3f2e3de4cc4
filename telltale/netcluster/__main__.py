"""`python -m telltale.netcluster up|down|status|cli`: the multi-node harness from a shell.

    up --nodes N [--workdir DIR] [--prefix tt]   create it, wait until healthy, say how to reach it
    status [--prefix tt]                         what runs, which nodes are online
    down [--prefix tt] [--keep]                  remove everything (also after a crashed `up`)
    cli [--prefix tt] [--controller ctl-b] -- ARGS   run `telltale ARGS` inside the hub

Needs root. Exit status: 0 done, 1 failed, 2 usage (or a cluster already up / none to show).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from telltale.netcluster import network
from telltale.netcluster.cluster import API_PORT, CONTROLLERS, ClusterError, NetCluster
from telltale.netcluster.state import DEFAULT_STATE_DIR, State, ours, teardown


def _say(line: str) -> None:
    print(f"==> {line}", flush=True)


def _state_file(args: argparse.Namespace) -> Path:
    return Path(args.state) if args.state else DEFAULT_STATE_DIR / f"{args.prefix}.json"


def _load(args: argparse.Namespace) -> State:
    path = _state_file(args)
    try:
        return State.load(path)
    except FileNotFoundError:
        raise SystemExit(f"no cluster {args.prefix!r} is up (no state file {path})") from None
    except (OSError, ValueError, TypeError) as exc:
        raise SystemExit(f"{path}: not a harness state file: {exc}") from None


def _cluster_for(state: State, state_file: Path) -> NetCluster:
    nodes = [n for n in state.addresses if n.startswith("node")]
    cluster = NetCluster(Path(state.workdir), max(len(nodes), 1), prefix=state.prefix, state_file=state_file)
    cluster.state = state
    return cluster


def up(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir or f"/var/tmp/telltale-netcluster-{args.prefix}")
    cluster = NetCluster(
        workdir,
        args.nodes,
        prefix=args.prefix,
        state_file=_state_file(args),
        lease_ttl=args.lease_ttl,
        detached=True,
        keep=args.keep,
        progress=_say,
    )
    try:
        cluster.up()
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if "already up" in str(exc) else 1
    except (network.NetworkError, TimeoutError) as exc:
        print(f"error: {exc} (everything made so far was removed)", file=sys.stderr)
        return 1
    env = cluster.cli_env()
    first = cluster.nodes[0]
    prefix = "" if args.prefix == "tt" else f" --prefix {args.prefix}"
    installed = Path(sys.executable).parent / "telltale"
    telltale = str(installed) if installed.exists() else "telltale"
    _say(f"up: {args.nodes} node(s) online, controllers SERVING, etcd healthy (work directory {workdir})")
    print(f"""
  nodes        {", ".join(f"{n}={cluster.address(n)} (netns {cluster.netns(n)})" for n in cluster.nodes)}
  controllers  {", ".join(f"{n}={a}:{API_PORT}" for n, a in CONTROLLERS.items())} (netns {cluster.hub})
  logs         {workdir}/logs/

The controllers live in namespace {cluster.hub}; run the CLI there (or in a node namespace):

  export {" ".join(f"{k}={v}" for k, v in env.items())}
  ip netns exec {cluster.hub} {telltale} nodes list
  {sys.executable} -m telltale.netcluster cli -- alerts list          # the same, environment included

Run a workload on a node:

  ip netns exec {cluster.netns(first)} {telltale} run --app shop --socket {cluster.socket(first)} -- CMD

Remove everything: {sys.executable} -m telltale.netcluster down{prefix}""")
    return 0


def down(args: argparse.Namespace) -> int:
    path = _state_file(args)
    state = _load(args)
    for line in teardown(state, keep=args.keep or None):
        _say(f"removed {line}")
    path.unlink(missing_ok=True)
    return 0


def status(args: argparse.Namespace) -> int:
    state = _load(args)
    existing = network.namespaces()
    print(f"cluster {state.prefix!r}: {'ready' if state.ready else 'NOT READY (up failed or running)'}")
    print(f"  work directory {state.workdir}")
    for netns in state.namespaces:
        print(f"  namespace {netns:<14} {'present' if netns in existing else 'MISSING'}")
    for name, process in state.processes.items():
        running = "running" if ours(process.pid, state.workdir) else "NOT RUNNING"
        print(f"  {name:<8} pid {process.pid:<8} {running:<12} netns {process.netns}  log {process.log}")
    cluster = _cluster_for(state, _state_file(args))
    try:
        nodes = cluster.list_nodes()
    except Exception as exc:
        print(f"  inventory: unavailable ({exc.__class__.__name__})")
        return 1
    for node in nodes:
        print(f"  node {node.node_id:<10} {'online' if node.liveness == 1 else 'offline':<8} "
              f"controller {node.controller_id or '-'}  last_seq {node.last_seq}")  # fmt: skip
    return 0


def cli(args: argparse.Namespace) -> int:
    state = _load(args)
    cluster = _cluster_for(state, _state_file(args))
    command = network.inside(cluster.hub, cluster.telltale(*args.args))
    env = {**os.environ, **cluster.cli_env(args.controller)}
    return subprocess.run(command, env=env, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m telltale.netcluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, run in (("up", up), ("down", down), ("status", status), ("cli", cli)):
        sub = commands.add_parser(name)
        sub.set_defaults(run=run)
        sub.add_argument("--prefix", default="tt", help="namespace name prefix (default %(default)s)")
        sub.add_argument("--state", default="", help=f"state file (default {DEFAULT_STATE_DIR}/PREFIX.json)")
    commands.choices["up"].add_argument("--nodes", type=int, default=3, help="node namespaces (default 3)")
    commands.choices["up"].add_argument(
        "--workdir", default="", help="default /var/tmp/telltale-netcluster-PREFIX"
    )
    commands.choices["up"].add_argument(
        "--lease-ttl", type=int, default=5, help="controllers' etcd lease TTL"
    )
    for name in ("up", "down"):
        commands.choices[name].add_argument(
            "--keep", action="store_true", help="keep the work directory on down"
        )
    commands.choices["cli"].add_argument("--controller", default="ctl-a", choices=sorted(CONTROLLERS))
    commands.choices["cli"].add_argument("args", nargs="*", help="telltale arguments (after --)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print(
            "error: the network harness needs root (network namespaces, bridges, nftables)", file=sys.stderr
        )
        return 2
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
