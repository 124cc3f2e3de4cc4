"""A test workload: does exactly the behaviours its arguments ask for, then exits 0.

    behave.py [--listen-all PORT] [--connect HOST:PORT] [--times N] [--shell] [--exit N]
    behave.py --stdin      then one command per line: "shell TAG", "listen PORT", "exit"
                           (each answered with "ok" on stdout once done)

All traffic stays on loopback.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen-all", type=int, default=None, help="listen on 0.0.0.0:PORT")
    parser.add_argument("--connect", default="", help="HOST:PORT to connect to")
    parser.add_argument("--connect-also", default="", help="a second HOST:PORT to connect to, once")
    parser.add_argument("--times", type=int, default=1, help="how many connections")
    parser.add_argument("--shell", action="store_true", help="run /bin/sh -c true")
    parser.add_argument("--exit", type=int, default=0, help="exit status")
    parser.add_argument("--stdin", action="store_true", help="take commands from stdin")
    args = parser.parse_args()
    if args.stdin:
        return serve_commands()
    server = None
    if args.listen_all is not None:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("0.0.0.0", args.listen_all))
        server.listen(64)
    if args.connect:
        host, port = args.connect.rsplit(":", 1)
        for _ in range(args.times):
            with socket.create_connection((host, int(port)), timeout=5):
                pass
    if args.connect_also:
        host, port = args.connect_also.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    if server is not None:
        server.close()
    if args.shell:
        subprocess.run(["/bin/sh", "-c", "true"], check=True)
    print("behave: done", flush=True)
    return args.exit


def serve_commands() -> int:
    """A long-running workload driven line by line, so a test can act between its behaviours."""
    for line in sys.stdin:
        command, _, argument = line.strip().partition(" ")
        if command == "shell":
            subprocess.run(["/bin/sh", "-c", f"true {argument}"], check=True)
        elif command == "listen":
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
                server.bind(("0.0.0.0", int(argument)))
                server.listen()
        elif command == "exit":
            return 0
        print("ok", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
