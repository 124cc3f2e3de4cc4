"""The harness's state file, and tearing down whatever it names.

`up` records every namespace and process *before* or as it creates them, so `down` can remove
everything even when `up` crashed half-way. A recorded pid is signalled only while its command
line still names the cluster's work directory (pids get reused); processes left inside the
cluster's namespaces (workloads) are ended too, since those namespaces are the cluster's own.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from telltale.netcluster import network

DEFAULT_STATE_DIR = Path("/run/telltale-netcluster")


@dataclass
class Process:
    """One daemon of the cluster: where it runs and how to start it again."""

    pid: int
    netns: str
    argv: list[str]
    log: str


@dataclass
class State:
    """What a cluster consists of; saved as JSON."""

    prefix: str
    workdir: str
    keep: bool = False
    namespaces: list[str] = field(default_factory=list)
    processes: dict[str, Process] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)  # name -> IPv4 (nodes, controllers)
    endpoints: dict[str, str] = field(default_factory=dict)  # what clients use: api, agents, etcd
    ready: bool = False

    def save(self, path: Path) -> None:
        """Write atomically (a crash leaves the old file or the new one)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> State:
        """Read a state file; OSError or ValueError when it is missing or not one."""
        raw = json.loads(path.read_text())
        processes = {name: Process(**p) for name, p in raw.pop("processes", {}).items()}
        return cls(**raw, processes=processes)


def cmdline(pid: int) -> str:
    """The command line of `pid`, or "" when it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie child is reaped and counts as gone)."""
    with contextlib.suppress(ChildProcessError, OSError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def ours(pid: int, marker: str) -> bool:
    """True when `pid` runs and its command line contains `marker` (the work directory).

    A process in the middle of an exec shows an empty command line for a moment: read again."""
    for _ in range(50):
        if not alive(pid):
            return False
        line = cmdline(pid)
        if line:
            return marker in line
        time.sleep(0.01)
    return False


def end(pids: list[int], timeout: float = 10.0) -> None:
    """SIGTERM each process group, then SIGKILL whatever is left after `timeout` seconds."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, sig)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.02)
        pids = [p for p in pids if alive(p)]
        if not pids:
            return


def teardown(state: State, *, keep: bool | None = None) -> list[str]:
    """Stop every process the state names (agents first, etcd last), end what is left inside the
    cluster's namespaces, delete the namespaces, and remove the work directory unless `keep` (by
    default, the state's own choice). Returns what it removed, for the caller to show."""
    removed = []

    def stage(name: str) -> int:
        return 2 if name.startswith("etcd") else 1 if name.startswith("ctl") else 0

    for current in (0, 1, 2):  # agents (and the relay), then the controllers, then etcd
        names = sorted(n for n in state.processes if stage(n) == current)
        end([state.processes[n].pid for n in names if ours(state.processes[n].pid, state.workdir)])
        removed += [f"process {n} (pid {state.processes[n].pid})" for n in names]
    existing = network.namespaces()
    for netns in state.namespaces:
        if netns not in existing:
            continue
        left = network.pids_in(netns)
        if left:
            end(left, timeout=2.0)
            removed.append(f"{len(left)} other process(es) in {netns}")
        network.delete_namespace(netns)
        removed.append(f"namespace {netns}")
    if not (state.keep if keep is None else keep):
        shutil.rmtree(state.workdir, ignore_errors=True)
        removed.append(f"directory {state.workdir}")
    return removed
