"""Connecting the CLI to a controller's API, and turning RPC failures into readable errors.

With TLS (the default) the CLI verifies the controller's certificate against --ca ($TELLTALE_CA;
else the system's roots) and sends a bearer token: --token (other users can see it in the process
list: avoid), else --token-file ($TELLTALE_TOKEN_FILE), else $TELLTALE_TOKEN. --cert/--key add a
client certificate (mutual TLS, for the controller's agent port). `--plaintext` is for a
controller on loopback only, and sends no token.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
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


@dataclass(frozen=True)
class ApiCredentials:
    """How the CLI authenticates to the API over TLS (paths; the token is read when used)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    token: str | None = None
    token_file: Path | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ApiCredentials:
        """The credentials named by the API options of `args` (absent options: none)."""

        def path(name: str) -> Path | None:
            value = getattr(args, name, None)
            return Path(value) if value else None

        return cls(path("ca"), path("cert"), path("key"), getattr(args, "token", None), path("token_file"))

    def bearer(self) -> str | None:
        """The token to send: --token, else --token-file, else $TELLTALE_TOKEN; CliError if the
        file cannot be read or is empty."""
        if self.token:
            return self.token
        if self.token_file is not None:
            try:
                token = self.token_file.read_text().strip()
            except OSError as exc:
                raise CliError(f"--token-file: {self.token_file}: {exc.strerror or exc}", code=2) from None
            if not token:
                raise CliError(f"--token-file: {self.token_file} is empty", code=2)
            return token
        return os.environ.get("TELLTALE_TOKEN", "").strip() or None

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """TLS credentials (with the client certificate, if any) carrying the bearer token."""
        if (self.cert is None) != (self.key is None):
            raise CliError("--cert and --key go together", code=2)
        material: list[bytes | None] = []
        for flag, file in (("--ca", self.ca), ("--cert", self.cert), ("--key", self.key)):
            try:
                material.append(file.read_bytes() if file is not None else None)
            except OSError as exc:
                raise CliError(f"{flag}: {file}: {exc.strerror or exc}", code=2) from None
        tls = grpc.ssl_channel_credentials(
            root_certificates=material[0], certificate_chain=material[1], private_key=material[2]
        )
        token = self.bearer()
        if token is None:
            return tls
        return grpc.composite_channel_credentials(tls, grpc.access_token_call_credentials(token))


_credentials = ApiCredentials()


def use_credentials(credentials: ApiCredentials) -> None:
    """Set the credentials `api_channel` uses with TLS (main() does, from the command line)."""
    global _credentials  # noqa: PLW0603 - one CLI invocation, one set of credentials
    _credentials = credentials


@contextmanager
def api_channel(address: str, *, plaintext: bool) -> Iterator[grpc.Channel]:
    """A channel to the controller API; RPC errors inside the block become CliError.

    TLS with the credentials given to `use_credentials`, unless `plaintext` (loopback only).
    """
    try:
        host, _ = split_host_port(address)
    except ValueError as exc:
        raise CliError(f"--controller: {exc}", code=2) from None
    if plaintext and not is_loopback_host(host):
        raise CliError(f"--plaintext is only allowed for a controller on loopback, not {address}", code=2)
    if plaintext:
        channel = grpc.insecure_channel(address)
    else:
        channel = grpc.secure_channel(address, _credentials.channel_credentials())
    try:
        yield channel
    except grpc.RpcError as exc:
        code = exc.code()
        if code == grpc.StatusCode.UNAVAILABLE:
            hint = (
                ""
                if plaintext
                else " (with TLS: check --ca, and that the address is one its certificate names)"
            )
            raise CliError(f"the controller at {address} is unavailable: {exc.details()}{hint}") from None
        if code == grpc.StatusCode.CANCELLED:
            raise CliError("cancelled", code=130) from None
        if code == grpc.StatusCode.UNAUTHENTICATED:
            raise CliError(
                f"not authenticated: {exc.details()} (give a token with --token-file or $TELLTALE_TOKEN)"
            ) from None
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
    env = os.environ.get
    parser.add_argument(
        "--ca",
        default=env("TELLTALE_CA"),
        metavar="PATH",
        help="CA certificate to verify the controller with ($TELLTALE_CA; default: the system's roots)",
    )
    parser.add_argument(
        "--cert",
        default=env("TELLTALE_CERT"),
        metavar="PATH",
        help="client certificate for mutual TLS, optional ($TELLTALE_CERT)",
    )
    parser.add_argument(
        "--key", default=env("TELLTALE_KEY"), metavar="PATH", help="key of --cert ($TELLTALE_KEY)"
    )
    parser.add_argument(
        "--token-file",
        default=env("TELLTALE_TOKEN_FILE"),
        metavar="PATH",
        help="file holding the API bearer token ($TELLTALE_TOKEN_FILE; or set $TELLTALE_TOKEN)",
    )
    parser.add_argument(
        "--token",
        metavar="TOKEN",
        help="API bearer token (prefer --token-file or $TELLTALE_TOKEN: other users can see flags)",
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
