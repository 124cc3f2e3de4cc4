"""`telltale demo`: the whole path on one machine, on loopback.

Starts a controller with its embedded etcd and an agent, applies a demo policy, runs a sample
workload under the shim, waits until its alerts are recorded, prints them, and stops everything.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

from telltale.devcluster import ClusterError, LocalCluster

EXPECTED_TYPES = {
    "process.shell_launched",
    "process.exec_from_writable_dir",
    "network.listen_all_interfaces",
    "network.blocklisted_destination",
}


def _step(message: str) -> None:
    print(f"==> {message}", flush=True)


def _alert_types(cluster: LocalCluster) -> set[str]:
    import json

    out = cluster.cli("alerts", "list", "-o", "json", "--app", "shop")
    if out.returncode != 0:
        return set()
    return {json.loads(line)["alert_type"] for line in out.stdout.splitlines() if line.strip()}


def run_demo(workdir: Path | None = None, *, keep: bool = False, timeout: float = 60.0) -> int:
    """Run the demo; returns 0 when every expected alert type appeared."""
    own_dir = workdir is None
    workdir = workdir or Path(tempfile.mkdtemp(prefix="telltale-demo-"))
    policy_file = resources.files("telltale.demo").joinpath("demo-policy.yaml")
    workload = resources.files("telltale.demo").joinpath("workload.py")
    print("telltale demo: everything runs on loopback, in plaintext mode (no TLS): a local demo only.")
    try:
        cluster = LocalCluster(workdir)
        _step("starting the controller (with an embedded etcd) and the node agent")
        with cluster:
            print(f"    controller API {cluster.api}, agent socket {cluster.socket_path}")
            _step("applying the demo policy: Standard plus a blocklist of 127.0.0.66/32")
            with resources.as_file(policy_file) as path:
                out = cluster.cli("policy", "apply", "-f", str(path))
            print("    " + (out.stdout.strip() or out.stderr.strip()))
            if out.returncode != 0:
                return 1
            _step("running the sample workload as application 'shop' under the shim")
            with resources.as_file(workload) as path:
                run = cluster.run_workload(
                    "shop",
                    [sys.executable, str(path)],
                    "--component",
                    "checkout",
                    "--version",
                    "1.4.2",
                    "--policy",
                    "Demo",
                )
            for line in (run.stdout + run.stderr).strip().splitlines():
                print(f"    | {line}")
            if run.returncode != 0:
                print(f"the workload failed with exit status {run.returncode}", file=sys.stderr)
                return 1
            _step("waiting for the alerts to be evaluated and stored")
            deadline = time.monotonic() + timeout
            seen: set[str] = set()
            while time.monotonic() < deadline and not seen >= EXPECTED_TYPES:
                seen = _alert_types(cluster)
                time.sleep(0.2)
            _step("telltale alerts list")
            listing = cluster.cli("alerts", "list")
            print(listing.stdout, end="")
            missing = EXPECTED_TYPES - seen
            if missing:
                print(f"missing alert types: {', '.join(sorted(missing))}", file=sys.stderr)
                print(cluster.log_tail("controller"), file=sys.stderr)
                return 1
            _step("telltale nodes list (the demo's agent leaves the host's firewall alone: enforcement off)")
            print(cluster.cli("nodes", "list").stdout, end="")
            _step("stopping the agent, the controller and etcd")
        print(f"demo complete: {len(seen)} alert types raised by a real workload, all processes stopped.")
        return 0
    except ClusterError as exc:
        print(f"telltale demo: {exc}", file=sys.stderr)
        return 1
    finally:
        if own_dir and not keep:
            shutil.rmtree(workdir, ignore_errors=True)
        elif keep:
            print(f"logs and data kept in {workdir}")
