"""Shim records (shim/FORMAT.md v1) to serialized telltale.v1.Event bytes: the agent's fast path.

Built from native/recordsmodule.c. See that file for what the fast path encodes and what it hands
back to the reference decoder (nodeagent/records.py).
"""

WOULD_BLOCK: int
LIMIT_REACHED: int
ERROR: int

Item = tuple[int, int, int, int, bytes] | bytes | None

def encode(message: bytes | bytearray | memoryview, /) -> tuple[int, int, int, int, bytes] | bytes: ...
def drain(fd: int, limit: int, /) -> tuple[list[Item], int]: ...
def join_events(events: list[bytes], /) -> bytes: ...
