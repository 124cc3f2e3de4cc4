"""Network namespaces for tests: created for one test, always removed, skipped where impossible.

Everything a test changes in the network (interfaces, addresses, sysctls, nftables) happens in
namespaces made here, never in the host's own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


def ip(*args: str) -> None:
    """Run `ip ARGS`; fail the test with ip's message when it fails."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        pytest.fail(f"ip {' '.join(args)}: {done.stderr.strip()}")


def inside(netns: str, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `cmd` inside `netns` and capture its output (no check)."""
    return subprocess.run(
        ["ip", "netns", "exec", netns, *cmd], capture_output=True, text=True, timeout=timeout, check=False
    )


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
