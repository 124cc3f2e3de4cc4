"""Connecting the CLI to a controller's API, and turning RPC failures into readable errors."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol, TypeVar

import grpc

from telltale.netutil import is_loopback_host, split_host_port
from telltale.v1 import common_pb2

DEFAULT_CONTROLLER = "127.0.0.1:7443"


class CliError(Exception):
    """A failure to show the user as one line; the process exits with `code`."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def default_controller() -> str:
    """The controller address from $TELLTALE_CONTROLLER, else the local default."""
    return os.environ.get("TELLTALE_CONTROLLER", DEFAULT_CONTROLLER)


def plaintext_from_env() -> bool:
    """True when $TELLTALE_PLAINTEXT asks for plaintext (1, true, yes)."""
    return os.environ.get("TELLTALE_PLAINTEXT", "").lower() in ("1", "true", "yes")


@contextmanager
def api_channel(address: str, *, plaintext: bool) -> Iterator[grpc.Channel]:
    """A channel to the controller API; RPC errors inside the block become CliError."""
    if not plaintext:
        raise CliError(
            "TLS is not configured: pass --plaintext (or set TELLTALE_PLAINTEXT=1) to reach a "
            "controller on loopback without encryption"
        )
    try:
        host, _ = split_host_port(address)
    except ValueError as exc:
        raise CliError(f"--controller: {exc}", code=2) from None
    if not is_loopback_host(host):
        raise CliError(f"--plaintext is only allowed for a controller on loopback, not {address}", code=2)
    channel = grpc.insecure_channel(address)
    try:
        yield channel
    except grpc.RpcError as exc:
        code = exc.code()
        if code == grpc.StatusCode.UNAVAILABLE:
            raise CliError(f"the controller at {address} is unavailable: {exc.details()}") from None
        if code == grpc.StatusCode.CANCELLED:
            raise CliError("cancelled", code=130) from None
        raise CliError(f"{code.name}: {exc.details()}") from None
    finally:
        channel.close()


def add_api_options(parser: argparse.ArgumentParser) -> None:
    """The options every command that calls the API takes."""
    parser.add_argument(
        "--controller",
        default=default_controller(),
        help="controller API address HOST:PORT (default: $TELLTALE_CONTROLLER or %(default)s)",
    )
    parser.add_argument(
        "--plaintext",
        action="store_true",
        default=plaintext_from_env(),
        help="no TLS: only for a controller on loopback ($TELLTALE_PLAINTEXT=1)",
    )
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="seconds per request (default %(default)s)"
    )


class _PagedRequest(Protocol):
    @property
    def page(self) -> common_pb2.PageRequest: ...


class _PagedResponse(Protocol):
    @property
    def page(self) -> common_pb2.PageResponse: ...


_Request = TypeVar("_Request", bound=_PagedRequest)
_Response = TypeVar("_Response", bound=_PagedResponse)


def every_page(
    rpc: grpc.UnaryUnaryMultiCallable[_Request, _Response], request: _Request, *, timeout: float
) -> list[_Response]:
    """Every page of a listing, in order: `rpc(request)`, then again with each page's
    ``next_page_token`` until a page has none, each call limited to `timeout` seconds. Sets
    ``request.page.page_token`` as it goes; an RPC error propagates."""
    pages = []
    while True:
        response = rpc(request, timeout=timeout)
        pages.append(response)
        if not response.page.next_page_token:
            return pages
        request.page.page_token = response.page.next_page_token
