"""Helpers shared by the servicers: error mapping and request validation."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import aetcd
import grpc

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


def require(value: str, field: str) -> str:
    """Return `value` stripped, or raise InvalidArgument naming `field` when it is empty."""
    value = value.strip()
    if not value:
        raise InvalidArgument(field, "is required")
    return value


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


def page_size(requested: int, *, default: int = 100, maximum: int = 1000) -> int:
    """The page size to use for a request's page_size (0 = default), capped at `maximum`."""
    if requested == 0:
        return default
    return min(requested, maximum)
