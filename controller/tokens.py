"""API tokens: bearer secrets mapped to roles, stored hashed, verified with a short cache.

A token reads ``tt_<id>_<secret>``: `id` (12 hex digits) names the record, `secret` (32 random bytes,
URL-safe base64) proves possession. Only the SHA-256 of the secret is stored, under
``<prefix>tokens/<id>`` in etcd as a JSON record (`TokenRecord`); it is compared in constant time.
The secret is returned once, at creation, and never logged: logs name tokens by id.

Revoking deletes the record. Replicas cache what they read for `CACHE_TTL_S` (a negative answer
too), so a revocation through any replica is refused by every replica within that time. A bearer
string that cannot be a token (wrong shape, a secret that is not 32 bytes of canonical URL-safe
base64) is refused before any lookup; answers for unknown ids are cached apart from the records
and in a smaller bound, so a flood of made-up ids cannot push valid tokens out of the cache.

A record that cannot be parsed is logged (by id) and treated as absent, never as a crash.

`EtcdTokens` keeps the records in etcd (aetcd directly); `MemoryTokens` is its in-memory twin.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from enum import IntEnum
from pathlib import Path
from typing import Protocol, TypeVar

import aetcd

from telltale import pki

log = logging.getLogger(__name__)

TOKEN_PREFIX = "tt_"
CACHE_TTL_S = 0.5
CACHE_SIZE = 10_000  # records of existing tokens
MISSING_CACHE_SIZE = 1_000  # ids found to have no record (kept apart: they never evict records)
SECRET_BYTES = 32
_TOKEN = re.compile(r"tt_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_ID = re.compile(r"[0-9a-f]{12}")
_V = TypeVar("_V")


class Role(IntEnum):
    """API roles, each allowed what the ones below it are: viewer < operator < admin.

    The values are those of telltale.v1.Role.
    """

    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        """The lower-case name used by the CLI and in messages ("admin")."""
        return self.name.lower()


@dataclass(frozen=True)
class TokenRecord:
    """What is stored about a token: never the secret, only its SHA-256 (hex)."""

    id: str
    name: str
    role: int
    secret_sha256: str
    creator: str = ""
    description: str = ""
    created_ns: int = 0
    expires_ns: int = 0  # 0: never

    def to_json(self) -> bytes:
        """The stored form."""
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> TokenRecord:
        """Parse the stored form; raises ValueError for a malformed record."""
        try:
            raw = json.loads(data)
            record = cls(**raw)
        except (TypeError, ValueError) as exc:  # JSONDecodeError, UnicodeDecodeError are ValueErrors
            raise ValueError(f"malformed token record: {exc}") from None
        for f in fields(cls):
            value = getattr(record, f.name)
            if type(value) is not (int if f.type in ("int", int) else str):
                raise ValueError(f"malformed token record: {f.name} is {type(value).__name__}")
        if record.role not in tuple(Role) or not _ID.fullmatch(record.id):
            raise ValueError(f"malformed token record: role {record.role!r}, id {record.id!r}")
        return record

    def expired(self, now_ns: int) -> bool:
        """True when the token has an expiry and it has passed at `now_ns`."""
        return self.expires_ns != 0 and now_ns >= self.expires_ns


@dataclass(frozen=True)
class NewToken:
    """A token just created: the bearer string (shown once) and its record."""

    bearer: str
    record: TokenRecord


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split_token(bearer: str) -> tuple[str, str] | None:
    """The (id, secret) of a well-formed bearer token, else None: the secret must be 32 bytes in
    canonical unpadded URL-safe base64 (what new_token makes)."""
    match = _TOKEN.fullmatch(bearer)
    if not match:
        return None
    secret = match.group(2)
    try:
        raw = base64.urlsafe_b64decode(secret + "=")
    except (binascii.Error, ValueError):
        return None
    if len(raw) != SECRET_BYTES or base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != secret:
        return None
    return match.group(1), secret


def new_token(
    role: Role, name: str, *, creator: str, description: str = "", expires_ns: int = 0, now_ns: int
) -> NewToken:
    """A fresh random token and the record to store for it."""
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    record = TokenRecord(
        id=token_id,
        name=name,
        role=int(role),
        secret_sha256=_hash(secret),
        creator=creator,
        description=description,
        created_ns=now_ns,
        expires_ns=expires_ns,
    )
    return NewToken(f"{TOKEN_PREFIX}{token_id}_{secret}", record)


class TokenStore(Protocol):
    """Where token records live."""

    async def put(self, record: TokenRecord) -> None:
        """Store a new record (ids are random: an existing one is replaced)."""
        ...

    async def get(self, token_id: str) -> TokenRecord | None:
        """The record of `token_id`, or None."""
        ...

    async def list(self) -> list[TokenRecord]:
        """Every record, in id order."""
        ...

    async def delete(self, token_id: str) -> TokenRecord | None:
        """Remove the record of `token_id`; return what was removed (None: there was none)."""
        ...


class MemoryTokens:
    """TokenStore in memory (tests, single-process tools)."""

    def __init__(self) -> None:
        self._records: dict[str, TokenRecord] = {}

    async def put(self, record: TokenRecord) -> None:
        self._records[record.id] = record

    async def get(self, token_id: str) -> TokenRecord | None:
        return self._records.get(token_id)

    async def list(self) -> list[TokenRecord]:
        return [self._records[k] for k in sorted(self._records)]

    async def delete(self, token_id: str) -> TokenRecord | None:
        return self._records.pop(token_id, None)


class EtcdTokens:
    """TokenStore in etcd, under ``<prefix>tokens/<id>``."""

    def __init__(self, client: aetcd.Client, prefix: str) -> None:
        self._client = client
        self._base = f"{prefix}tokens/".encode()

    def _key(self, token_id: str) -> bytes:
        if not _ID.fullmatch(token_id):  # ids go into keys: never let one escape the prefix
            raise ValueError(f"not a token id: {token_id!r}")
        return self._base + token_id.encode()

    async def put(self, record: TokenRecord) -> None:
        await self._client.put(self._key(record.id), record.to_json())

    def _parse(self, key: bytes, value: bytes) -> TokenRecord | None:
        """The record stored at `key`, or None (logged) when it is malformed."""
        try:
            return TokenRecord.from_json(value)
        except ValueError as exc:
            log.error("ignoring the token record at %s: %s", key.decode(errors="replace"), exc)
            return None

    async def get(self, token_id: str) -> TokenRecord | None:
        if not _ID.fullmatch(token_id):
            return None
        kv = await self._client.get(self._key(token_id))
        return None if kv is None else self._parse(self._key(token_id), kv.value)

    async def list(self) -> list[TokenRecord]:
        """Every well-formed record, in id order; malformed ones are logged and left out."""
        result = await self._client.get_prefix(self._base)
        records = (self._parse(kv.key, kv.value) for kv in result)
        return sorted((r for r in records if r is not None), key=lambda r: r.id)

    async def delete(self, token_id: str) -> TokenRecord | None:
        """Remove the record of `token_id`; what was removed (a malformed record: a placeholder
        naming the id, so revoking one works)."""
        if not _ID.fullmatch(token_id):
            return None
        deleted = await self._client.delete(self._key(token_id), prev_kv=True)
        if deleted is None or deleted.prev_kv is None:
            return None
        return self._parse(self._key(token_id), deleted.prev_kv.value) or TokenRecord(
            id=token_id, name="(malformed record)", role=0, secret_sha256=""
        )


class Verdict(IntEnum):
    """Why a bearer token was refused (OK: accepted)."""

    OK = 0
    MALFORMED = 1
    UNKNOWN = 2
    EXPIRED = 3


class TokenVerifier:
    """Checks bearer tokens against a TokenStore, caching each id's record for `ttl` seconds.

    `clock` returns nanoseconds since the epoch (expiry); `monotonic` seconds (the cache).
    """

    def __init__(
        self,
        store: TokenStore,
        *,
        ttl: float = CACHE_TTL_S,
        clock: Callable[[], int] = time.time_ns,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self._ttl = ttl
        self._clock = clock
        self._monotonic = monotonic
        self._cache: OrderedDict[str, tuple[float, TokenRecord]] = OrderedDict()
        self._missing: OrderedDict[str, float] = OrderedDict()

    async def verify(self, bearer: str) -> tuple[Verdict, TokenRecord | None]:
        """The verdict on `bearer` and, when accepted, its record. Store errors propagate."""
        parts = split_token(bearer)
        if parts is None:
            return Verdict.MALFORMED, None
        token_id, secret = parts
        record = await self._record(token_id)
        if record is None or not hmac.compare_digest(record.secret_sha256, _hash(secret)):
            return Verdict.UNKNOWN, None
        if record.expired(self._clock()):
            return Verdict.EXPIRED, None
        return Verdict.OK, record

    async def _record(self, token_id: str) -> TokenRecord | None:
        now = self._monotonic()
        cached = self._cache.get(token_id)
        if cached is not None and now - cached[0] < self._ttl:
            return cached[1]
        missing_since = self._missing.get(token_id)
        if missing_since is not None and now - missing_since < self._ttl:
            return None
        record = await self.store.get(token_id)
        self.forget(token_id)
        if record is None:
            _bounded_put(self._missing, token_id, now, MISSING_CACHE_SIZE)
        else:
            _bounded_put(self._cache, token_id, (now, record), CACHE_SIZE)
        return record

    def forget(self, token_id: str) -> None:
        """Drop what is cached about `token_id` (after revoking it through this replica)."""
        self._cache.pop(token_id, None)
        self._missing.pop(token_id, None)


def _bounded_put(cache: OrderedDict[str, _V], key: str, value: _V, limit: int) -> None:
    """Insert `key` as the newest entry, dropping the oldest ones beyond `limit`."""
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > limit:
        cache.popitem(last=False)


async def bootstrap_admin(store: TokenStore, path: Path, *, now_ns: int) -> TokenRecord | None:
    """When no token exists, create an admin token named "bootstrap" and write it to `path`.

    The file is written (mode 0600, atomically) before the record is stored, so a token is never
    stored that nobody received. Returns the new record, or None when tokens exist already.
    Replicas bootstrapping at the same moment may each create one (each writes its own file).
    Raises OSError when the file cannot be written.
    """
    if await store.list():
        return None
    token = new_token(Role.ADMIN, "bootstrap", creator="controller bootstrap", now_ns=now_ns)
    _write_secret(path, token.bearer + "\n")
    await store.put(token.record)
    return token.record


def _write_secret(path: Path, text: str) -> None:
    """Write `text` to `path` atomically, mode 0600 from the start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pki.write_atomically(path, text.encode(), 0o600)
