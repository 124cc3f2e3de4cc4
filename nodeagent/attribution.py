"""What the kernel says about the processes behind a shim connection, for attributing records.

The intake believes a record's pid only as far as the kernel backs it: the connection's peer pid
(SO_PEERCRED) and the process tree /proc shows. `ProcessTable` is that view behind a small
interface (tests pass an in-memory one); `of_peer_tree` and `chain` are the two questions asked of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

# How far up the process tree attribution looks: a vfork child is one level below its parent.
MAX_TREE_DEPTH = 8


class ProcessTable(Protocol):
    """The kernel's view of processes that attribution relies on."""

    def parent(self, pid: int) -> int | None:
        """The parent pid of the live process `pid`; None when no process has that pid now."""
        ...


class ProcFS:
    """ProcessTable read from /proc (of the agent's pid namespace)."""

    def __init__(self, root: Path = Path("/proc")) -> None:
        self.root = root

    def parent(self, pid: int) -> int | None:
        if pid <= 0:
            return None
        try:
            stat = (self.root / str(pid) / "stat").read_bytes()
        except OSError:
            return None
        # "pid (comm) state ppid ...": comm may hold anything, ")" included.
        try:
            return int(stat[stat.rindex(b")") + 2 :].split(maxsplit=2)[1])
        except (ValueError, IndexError):
            return None


def of_peer_tree(table: ProcessTable, peer: int, pid: int) -> bool | None:
    """Whether the process `pid` is `peer` or descends from it (within MAX_TREE_DEPTH levels).

    True: it is. False: a live process that is not, while `peer` lives; or pid 0. None: it cannot
    be told: no process has `pid` now, an ancestor went while the tree was read, or `peer` is gone
    (its children are re-parented).
    """
    if pid == peer and pid > 0:
        return True
    if pid <= 0:
        return False
    current = pid
    for _ in range(MAX_TREE_DEPTH):
        parent = table.parent(current)
        if parent is None:  # `pid` is gone, or an ancestor went while we looked
            return None
        if parent == peer:
            return True
        if parent <= 1:
            break
        current = parent
    return False if table.parent(peer) is not None else None


def chain(table: ProcessTable, start: int) -> list[int]:
    """`start` and its ancestors, closest first: at most MAX_TREE_DEPTH pids, init and 0 excluded.

    `start` itself is included whether or not it is still alive.
    """
    pids: list[int] = []
    current: int | None = start
    while current is not None and current > 1 and len(pids) < MAX_TREE_DEPTH:
        pids.append(current)
        current = table.parent(current)
    return pids
