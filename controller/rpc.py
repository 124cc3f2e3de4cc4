"""Helpers shared by the servicers: error mapping, request validation and paging.

Validation answers INVALID_ARGUMENT with a message that starts with the field's path
("page.page_token: …", "filter.priorities[0]: …"), and runs before anything is written.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import aetcd
import grpc
from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.timestamp_pb2 import Timestamp

from telltale.controller.auth import current_caller
from telltale.controller.errors import ControllerError, InvalidArgument, status_of
from telltale.controller.store import Conflict
from telltale.v1 import common_pb2

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]]


def unary(fn: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """Wrap a unary servicer method: domain errors become their gRPC status, nothing else leaks."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext[Any, Any]) -> Resp:
        try:
            return await fn(self, request, context)
        except ControllerError as exc:
            await context.abort(status_of(exc), str(exc))
        except Conflict as exc:
            await context.abort(grpc.StatusCode.ABORTED, f"{exc}; retry")
        except aetcd.ClientError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, store_unavailable(exc))
        raise AssertionError("unreachable: abort raises")

    return wrapper


def store_unavailable(exc: Exception) -> str:
    """The message for a request that failed because etcd could not serve it."""
    return f"the shared state (etcd) cannot serve this request now ({type(exc).__name__}); retry"


# Names and identifiers (policy, application, node, fingerprint, alert type): a DNS name's bound.
MAX_NAME_BYTES = 253
# A policy document; what it encodes to is bounded again, more tightly, by the policy service.
MAX_DOCUMENT_BYTES = 1024 * 1024
# Entries of one repeated request field (filters, application lists).
MAX_LIST_ITEMS = 1000
# What google.protobuf.Timestamp can hold: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
MIN_TIMESTAMP_S = -62_135_596_800
MAX_TIMESTAMP_S = 253_402_300_799


def require(value: str, field: str, *, max_bytes: int = MAX_NAME_BYTES) -> str:
    """Return `value` stripped, or raise InvalidArgument naming `field` when it is empty or longer
    than `max_bytes` once encoded."""
    check_length(value, field, max_bytes=max_bytes)
    value = value.strip()
    if not value:
        raise InvalidArgument(field, "is required")
    return value


def check_length(value: str, field: str, *, max_bytes: int = MAX_NAME_BYTES) -> str:
    """Return `value`, or raise InvalidArgument naming `field` when it is longer than `max_bytes`."""
    size = len(value.encode())
    if size > max_bytes:
        raise InvalidArgument(field, f"is {size} bytes long; the limit is {max_bytes}")
    return value


def check_names(values: Iterable[str], field: str) -> None:
    """Each entry of a repeated string field is non-empty and at most MAX_NAME_BYTES; at most
    MAX_LIST_ITEMS entries. Raises InvalidArgument naming the entry ("field[3]")."""
    values = list(values)
    if len(values) > MAX_LIST_ITEMS:
        raise InvalidArgument(field, f"has {len(values)} entries; the limit is {MAX_LIST_ITEMS}")
    for i, value in enumerate(values):
        require(value, f"{field}[{i}]")


def check_enum(value: int, enum: EnumDescriptor, field: str, *, unspecified_ok: bool = False) -> int:
    """Return `value` if it is a value of `enum` (its zero *_UNSPECIFIED only with `unspecified_ok`);
    proto3 enums are open, so any integer arrives. Raises InvalidArgument naming `field`."""
    if value not in enum.values_by_number or (value == 0 and not unspecified_ok):
        raise InvalidArgument(field, f"{value} is not a valid {enum.name}")
    return value


def check_enums(values: Iterable[int], enum: EnumDescriptor, field: str) -> None:
    """Each entry of a repeated enum field is a value of `enum` other than *_UNSPECIFIED."""
    values = list(values)
    if len(values) > MAX_LIST_ITEMS:
        raise InvalidArgument(field, f"has {len(values)} entries; the limit is {MAX_LIST_ITEMS}")
    for i, value in enumerate(values):
        check_enum(value, enum, f"{field}[{i}]")


def check_timestamp(ts: Timestamp, field: str) -> Timestamp:
    """Return `ts` if it lies in the range a Timestamp can hold (years 1 to 9999, nanos in
    [0, 1e9)); raises InvalidArgument naming `field` otherwise."""
    if not MIN_TIMESTAMP_S <= ts.seconds <= MAX_TIMESTAMP_S or not 0 <= ts.nanos < 1_000_000_000:
        raise InvalidArgument(
            field, f"seconds={ts.seconds} nanos={ts.nanos} is outside 0001-01-01 to 9999-12-31"
        )
    return ts


T = TypeVar("T")


def paginate(
    items: Iterable[T], key: Callable[[T], str], page: common_pb2.PageRequest
) -> tuple[list[T], str]:
    """One page of `items` ordered by the unique string `key`, and the token of the next page.

    The token is the key of the page's last item, so a page is stable while items come and go.
    Returns an empty token on the last page.
    """
    ordered = sorted(items, key=key)
    if page.page_token:
        ordered = [item for item in ordered if key(item) > page.page_token]
    size = page_size(page.page_size)
    if len(ordered) > size:
        return ordered[:size], key(ordered[size - 1])
    return ordered, ""


def encode_token(kind: str, position: str) -> str:
    """An opaque page token for `position` in listing `kind`."""
    return base64.urlsafe_b64encode(f"{kind}:{position}".encode()).decode()


def decode_token(kind: str, token: str) -> str:
    """The position in a page token this server issued for listing `kind`; InvalidArgument naming
    page.page_token otherwise."""
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        text = ""
    if not text.startswith(f"{kind}:"):
        shown = token if len(token) <= 64 else token[:64] + "…"
        raise InvalidArgument("page.page_token", f"{shown!r} is not a token this listing issued")
    return text.removeprefix(f"{kind}:")


def paged(
    kind: str, page: common_pb2.PageRequest, items: Iterable[T], key: Callable[[T], str]
) -> tuple[list[T], common_pb2.PageResponse]:
    """One page of `items` by the unique string `key`, behind opaque tokens of `kind` (see paginate).

    Raises InvalidArgument naming page.page_token for a token another listing issued, or none did."""
    position = common_pb2.PageRequest(page_size=page.page_size)
    if page.page_token:
        position.page_token = decode_token(kind, page.page_token)
    chosen, after = paginate(items, key, position)
    return chosen, common_pb2.PageResponse(next_page_token=encode_token(kind, after) if after else "")


def page_size(requested: int, *, default: int = 100, maximum: int = 1000) -> int:
    """The page size to use for a request's page_size (0 = default), capped at `maximum`."""
    if requested == 0:
        return default
    return min(requested, maximum)


def actor(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """Who makes a change, as recorded with it: the authenticated caller (a token's name and id,
    a certificate's identity) and the peer address. Never a secret."""
    caller = current_caller()
    peer = context.peer() or "an unknown peer"
    return f"{caller} from {peer}" if caller is not None else str(peer)
