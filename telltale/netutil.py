"""Small network helpers shared by the controller, the agent and the CLI."""

from __future__ import annotations

import ipaddress
import socket


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on `host` right now (it may be taken again before use)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def split_host_port(address: str) -> tuple[str, int]:
    """Split "host:port" or "[v6]:port".

    Raises ValueError naming the address when it has no valid port.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def is_loopback_host(host: str) -> bool:
    """True when `host` names only the loopback interface ("localhost" or a loopback address)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
