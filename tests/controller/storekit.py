"""What the Store contract modules share: the harness a test body gets, and small helpers.

The fixtures that build a harness (one embedded etcd per module, a fresh store per test) are in
this directory's conftest.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from telltale.controller.store import Store
from telltale.engine import builtin
from telltale.engine import policy as policy_model
from telltale.v1 import policy_pb2

T = TypeVar("T")
WAIT_S = 5.0


@dataclass
class Harness:
    """What a test body gets: the store under test, and a way to compact its history."""

    store: Store
    compact: Callable[[int], Awaitable[object]]


Body = Callable[[Harness], Awaitable[None]]
Run = Callable[[Body], None]


async def take(iterator: AsyncIterator[T], count: int, wait_s: float = WAIT_S) -> list[T]:
    """The next `count` items of `iterator`, failing the test if they do not come within `wait_s`."""
    items: list[T] = []
    deadline = time.monotonic() + wait_s
    while len(items) < count:
        try:
            items.append(await asyncio.wait_for(anext(iterator), deadline - time.monotonic()))
        except TimeoutError:
            pytest.fail(f"got {len(items)} of {count} items within {wait_s}s: {items}")
    return items


async def closed(iterator: AsyncIterator[Any]) -> None:
    """Close an async generator now rather than when it is collected."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()


def custom_policy(name: str, description: str = "a test policy", revision: int = 1) -> policy_pb2.Policy:
    message = policy_model.to_proto(
        policy_model.parse_document(
            f"""
apiVersion: telltale.dev/v1
kind: AlertPolicy
metadata:
  name: {name}
  description: {description}
spec:
  rules:
    process.shell_launched:
      priority: P1
"""
        )
    )
    message.revision = revision
    return message


def builtins() -> list[policy_pb2.Policy]:
    return [policy_model.to_proto(p) for p in builtin.load_builtin_policies().values()]
