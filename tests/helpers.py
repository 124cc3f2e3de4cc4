"""Helpers shared by test modules (importable as `helpers`: tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import trio

from telltale.v1 import policy_pb2, policy_pb2_grpc

WORKLOADS = Path(__file__).parent / "workloads"


def behave(*args: str) -> list[str]:
    """The command line of the test workload (tests/workloads/behave.py) with these arguments."""
    return [sys.executable, str(WORKLOADS / "behave.py"), *args]


async def eventually(predicate: Callable[[], bool], what: str, within: float = 10.0) -> None:
    """In trio: poll `predicate` until it holds; fail naming `what` after `within` (clock) seconds."""
    deadline = trio.current_time() + within
    while trio.current_time() < deadline:
        if predicate():
            return
        await trio.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


def create_policy(channel: grpc.Channel, document: str) -> None:
    """Create the policy `document` (YAML) through the controller's API."""
    policy_pb2_grpc.PolicyServiceStub(channel).CreatePolicy(policy_pb2.CreatePolicyRequest(document=document))
