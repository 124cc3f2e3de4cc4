"""Service manager notifications (the sd_notify protocol), without linking libsystemd.

Under systemd with `Type=notify`, the service manager sets `$NOTIFY_SOCKET` and waits for the
service to send "READY=1" before it considers the unit started; "STOPPING=1" tells it a stop is
under way, "STATUS=…" sets the text `systemctl status` shows. Outside systemd the variable is unset
and `notify` does nothing, so callers never need to know how the agent was started.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
SEND_TIMEOUT_S = 1.0


def notify_address(environ: Mapping[str, str] = os.environ) -> str | None:
    """The datagram socket address `$NOTIFY_SOCKET` names, or None when unset or not usable.

    A leading "@" names a socket in the abstract namespace (returned with a leading NUL byte); any
    other value must be an absolute path. Other forms (such as systemd's "vsock:" addresses) give None.
    """
    value = environ.get(NOTIFY_SOCKET_ENV, "")
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def notify(state: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Send `state` ("READY=1", "STOPPING=1", "STATUS=…"; several joined by newlines) to the manager.

    Returns True when the datagram was sent, False when there is no `$NOTIFY_SOCKET` (not run by a
    service manager) or sending failed. Never raises. Hazard: it blocks for at most SEND_TIMEOUT_S
    when the manager's queue is full; from an event loop, that is a brief stall, not a hang.
    """
    address = notify_address(environ)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(SEND_TIMEOUT_S)
            sock.sendto(state.encode(), address)
    except (OSError, ValueError, UnicodeError):
        return False
    return True
