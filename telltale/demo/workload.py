"""The demo's sample workload: a small program that does four things a security team cares about.

All of its traffic stays on loopback: the "blocklisted" destination is 127.0.0.66, which the demo
policy lists as a blocked network.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

BLOCKLISTED = "127.0.0.66"


def main() -> None:
    # 1. A listener on every interface (closed right away).
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("0.0.0.0", 0))
    server.listen()
    port = server.getsockname()[1]
    print(f"listening on 0.0.0.0:{port}")

    # 2. Five connections to a blocklisted address (loopback: the listener above answers).
    for _ in range(5):
        with socket.create_connection((BLOCKLISTED, port), timeout=2):
            pass
    print(f"connected 5 times to {BLOCKLISTED}:{port}")
    server.close()

    # 3. A shell launched by the application.
    subprocess.run(["/bin/sh", "-c", "exit 0"], check=True)
    print("ran /bin/sh")

    # 4. A program run from a temporary directory.
    with tempfile.TemporaryDirectory() as tmp:
        dropped = Path(tmp) / "updater"
        shutil.copy("/bin/true", dropped)
        subprocess.run([str(dropped)], check=True)
    print("ran a program from a temporary directory")


if __name__ == "__main__":
    main()
