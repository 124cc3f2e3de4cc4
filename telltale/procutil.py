"""Helpers for the child processes telltale starts (the embedded etcd, the local cluster)."""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)


def tied_to_parent(cmd: Sequence[str]) -> list[str]:
    """`cmd` wrapped so the kernel sends it SIGTERM when the thread that starts it dies.

    Uses util-linux's `setpriv --pdeathsig` when present (the parent-death signal fires when the
    *thread* that forked exits, so start such children from a long-lived thread, such as the
    main one). Without setpriv the command is returned unchanged.
    """
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return list(cmd)
    return [setpriv, "--pdeathsig", "TERM", "--", *cmd]


def stop_stale(pid_file: Path, marker: str, timeout: float = 5.0) -> bool:
    """Kill a process left behind by a previous run and recorded in `pid_file`.

    Only a live process whose command line contains `marker` is signalled (SIGKILL: it is an
    orphan holding resources we need, such as etcd's data-directory lock). Waits up to
    `timeout` seconds for it to be gone. Returns True when one was stopped.
    """
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, ValueError):
        return False
    if marker not in cmdline:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return True


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (every shim connection, agent stream or client
    holds a descriptor).

    Returns the soft limit in force afterwards, which stays as it was if the kernel refuses.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:  # an unlimited hard limit is above fs.nr_open
            log.warning("could not raise the open file limit from %d: %s", soft, exc)
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return soft


def wait_or_kill(process: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait up to `timeout` seconds for `process` to exit, then SIGKILL its process group (it was
    started with start_new_session) and reap it."""
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def terminate(process: subprocess.Popen[bytes], timeout: float) -> None:
    """Stop `process`: SIGTERM, then SIGKILL to its process group after `timeout` seconds.
    Nothing happens to a process that has already exited."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    wait_or_kill(process, timeout)
