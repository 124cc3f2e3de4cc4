"""A byte relay from unix sockets to TCP addresses, run inside the hub namespace.

The harness's controllers listen only inside the hub network namespace. A unix socket is a file,
reachable from every namespace, so this relay (started inside the hub) lets a process in the host's
namespace — a test, the harness's own health checks — open a gRPC channel to a controller without
any address, route or bridge in the host namespace. TLS passes through untouched.

    python -m telltale.netcluster.relay /path/api-a.sock=10.77.0.21:7443 [/path/b.sock=HOST:PORT …]
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            writer.close()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _handler(host: str, port: int) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
        except (OSError, TimeoutError):
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    return handle


async def serve(routes: dict[Path, tuple[str, int]]) -> None:
    """Listen on every unix socket path and relay each connection to its TCP address, for ever."""
    servers = []
    for path, (host, port) in routes.items():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        servers.append(await asyncio.start_unix_server(_handler(host, port), path=str(path)))
        os.chmod(path, 0o600)
    print("relaying", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


def parse(args: list[str]) -> dict[Path, tuple[str, int]]:
    """PATH=HOST:PORT arguments as a mapping; ValueError on a malformed one."""
    routes = {}
    for arg in args:
        path, sep, target = arg.partition("=")
        host, _, port = target.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"{arg!r} is not PATH=HOST:PORT")
        routes[Path(path)] = (host, int(port))
    return routes


def main() -> None:
    try:
        routes = parse(sys.argv[1:])
    except ValueError as exc:
        sys.exit(f"relay: {exc}")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(routes))


if __name__ == "__main__":
    main()
