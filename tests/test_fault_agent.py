"""Fault: the agent killed under a running workload, then restarted (issue 8).

The node's policy blocks one address (`action: block`), so the agent's nftables table inside the
node's namespace holds it. A workload that launches shells and tries to connect to the blocked
address runs twice: once with the agent up all along, once with the agent killed (SIGKILL) half-way
through. Its output and exit status must be the same. The block must outlive the agent (the table
stays), and the restarted agent must reconcile it (the table is still there, reported again) and
resume (a new workload's events arrive).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from netclusterkit import apply_policy, figure, net_cluster, node, occurrences

from telltale.netcluster import NetCluster, wait_until

pytestmark = pytest.mark.e2e

BLOCKED = "10.77.0.99"
FENCE = f"""
apiVersion: telltale.dev/v1
kind: AlertPolicy
metadata:
  name: Fence
spec:
  rules:
    process.shell_launched:
      enabled: true
    network.blocklisted_destination:
      action: block
      params:
        networks: ["{BLOCKED}/32"]
"""
# Reads one command a line: "shell" runs /bin/sh, "connect" tries the blocked address; answers each.
WORKLOAD = f"""
import socket, subprocess, sys
for line in sys.stdin:
    command = line.strip()
    if command == "shell":
        said = subprocess.run(["/bin/sh", "-c", "echo hi"], capture_output=True, text=True).stdout
        print("shell", said.strip())
    elif command == "connect":
        try:
            socket.create_connection(("{BLOCKED}", 80), timeout=3).close()
            print("connect ok")
        except OSError as exc:
            print("connect", type(exc).__name__)
    elif command == "exit":
        print("bye")
        sys.exit(3)
    sys.stdout.flush()
"""
FIRST = ["shell", "connect"]
REST = ["shell", "connect", "shell", "exit"]


def blocked_in_table(cluster: NetCluster, name: str) -> bool:
    listed = cluster.inside(name, "nft", "list", "table", "inet", "telltale")
    return listed.returncode == 0 and BLOCKED in listed.stdout


def test_killing_the_agent_leaves_the_workload_unchanged_and_a_restart_reconciles(tmp_path: Path) -> None:
    """A workload runs on unchanged across kill -9 of its agent; the restarted agent keeps the block
    and resumes sending."""
    with net_cluster(tmp_path, 1) as cluster:
        [name] = cluster.nodes
        apply_policy(cluster, FENCE, default="Fence")
        wait_until(lambda: node(cluster, name).enforcement.blocked_networks == 1, 60, "the block in force")
        assert blocked_in_table(cluster, name)
        script = tmp_path / "workload.py"
        script.write_text(WORKLOAD)
        argv = cluster.workload_argv(name, "steady", ["python3", str(script)])

        reference = subprocess.run(
            argv,
            input="\n".join(FIRST + REST) + "\n",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert reference.returncode == 3, reference.stderr
        assert "connect ConnectionRefusedError" in reference.stdout, "the block refuses the connection"

        workload = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert workload.stdin is not None
        assert workload.stdout is not None
        lines = []
        for command in FIRST:
            workload.stdin.write(command + "\n")
            workload.stdin.flush()
            lines.append(workload.stdout.readline())
        instance = node(cluster, name).instance_id
        cluster.kill(name)
        killed_at = time.monotonic()
        out, err = workload.communicate("\n".join(REST) + "\n", timeout=60)
        survived = time.monotonic() - killed_at
        assert "".join(lines) + out == reference.stdout, err
        assert workload.returncode == reference.returncode
        assert blocked_in_table(cluster, name), "the block outlives the agent"

        cluster.start(name)
        restarted_at = time.monotonic()
        wait_until(
            lambda: (
                (n := node(cluster, name)).instance_id != instance and n.enforcement.blocked_networks == 1
            ),
            60,
            "the restarted agent to report the block",
        )
        reconciled = time.monotonic() - restarted_at
        assert blocked_in_table(cluster, name), "the restarted agent keeps the table"
        done = cluster.run_workload(name, "after-restart", ["/bin/sh", "-c", "sh -c true"])
        assert done.returncode == 0, done.stderr
        wait_until(
            lambda: occurrences(cluster, "process.shell_launched").get("after-restart"), 60, "new events"
        )
        resumed = time.monotonic() - restarted_at
        figure(
            f"agent kill -9 under a workload: output and exit status identical to the reference run "
            f"({len(FIRST + REST)} commands, {survived:.2f} s without agent); block kept in the namespace's "
            f"nftables table; restarted agent reported it {reconciled:.2f} s after start, new events "
            f"recorded {resumed:.2f} s after start"
        )
