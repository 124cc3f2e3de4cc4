"""Network namespaces for tests: created for one test, always removed, skipped where impossible.

Everything a test changes in the network (interfaces, addresses, sysctls, nftables) happens in
namespaces made here, never in the host's own; `host_tables_unchanged` proves it for nftables.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from telltale.nodeagent.enforce import LIBNFTABLES_SONAME


def ip(*args: str) -> None:
    """Run `ip ARGS`; fail the test with ip's message when it fails."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        pytest.fail(f"ip {' '.join(args)}: {done.stderr.strip()}")


def in_netns(netns: str, *cmd: str) -> list[str]:
    """The command line that runs `cmd` inside `netns` (for a process the test starts itself)."""
    return ["ip", "netns", "exec", netns, *cmd]


def inside(
    netns: str, *cmd: str, input: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `cmd` inside `netns`, with `input` on its stdin, and capture its output (no check)."""
    return subprocess.run(
        in_netns(netns, *cmd), input=input, capture_output=True, text=True, timeout=timeout, check=False
    )


def sysctl(netns: str, setting: str) -> None:
    """Set a kernel setting (`name=value`) inside `netns`; fail the test when sysctl fails."""
    done = inside(netns, "sysctl", "-qw", setting, timeout=30)
    if done.returncode != 0:
        pytest.fail(f"sysctl {setting} in {netns}: {done.stderr.strip()}")


@contextmanager
def network_namespace(prefix: str) -> Iterator[str]:
    """A new namespace named `prefix-<random>` with loopback up; skips the test when namespaces
    cannot be made (not root, no iproute2); removed on the way out whatever happened."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("ip") is None:
        pytest.skip("iproute2's ip command is not installed")
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    created = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, check=False)
    if created.returncode != 0:
        pytest.skip(f"network namespaces unavailable: {created.stderr.strip()}")
    try:
        ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def require_libnftables() -> None:
    """Skip the test when libnftables (Debian's libnftables1), which enforcement loads, is missing."""
    try:
        ctypes.CDLL(LIBNFTABLES_SONAME)
    except OSError:
        pytest.skip(f"{LIBNFTABLES_SONAME} is not installed")


def host_tables() -> str:
    """The host namespace's nftables table list (read only)."""
    return subprocess.run(
        ["nft", "list", "tables"], capture_output=True, text=True, timeout=30, check=True
    ).stdout


@contextmanager
def host_tables_unchanged() -> Iterator[None]:
    """Around a block that changes nftables in namespaces: afterwards, the host namespace's table
    list is what it was before and holds no telltale table. Skips the test without root or the
    nft command."""
    if os.geteuid() != 0:
        pytest.skip("reading the host's nftables needs root")
    if shutil.which("nft") is None:
        pytest.skip("the nft command is not installed")
    before = host_tables()
    yield
    after = host_tables()
    assert after == before, "the host namespace's nftables tables changed"
    assert "inet telltale" not in after
