"""`telltale run`: start a workload with the shim attached, tied to an application.

The current process is replaced by the workload (exec), so its exit status, signals and
terminal are the workload's own.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn

from telltale._native import shim_path
from telltale.nodeagent import workload as workload_descriptor
from telltale.v1 import common_pb2

log = logging.getLogger(__name__)


def build_environment(
    base: Mapping[str, str], workload: common_pb2.Workload, socket_path: Path, shim: Path
) -> dict[str, str]:
    """The workload's environment: `base` plus the shim and what it needs to report.

    Raises DescriptorError when the workload names are invalid.
    """
    env = dict(base)
    preload = [str(shim)] + [p for p in env.get("LD_PRELOAD", "").replace(":", " ").split() if p != str(shim)]
    env["LD_PRELOAD"] = " ".join(preload)
    env["TELLTALE_SOCKET"] = str(socket_path)
    env["TELLTALE_WORKLOAD"] = workload_descriptor.encode(workload)
    return env


def new_workload(
    application: str,
    *,
    component: str = "",
    version: str = "",
    environment: str = "",
    policy: str = "",
    tags: Mapping[str, str] | None = None,
    command: Sequence[str] = (),
) -> common_pb2.Workload:
    """A workload with a fresh id; raises DescriptorError naming an invalid field."""
    check = workload_descriptor.check_name
    workload = common_pb2.Workload(
        id=uuid.uuid4().hex,
        application=check(application, "--app", required=True),
        component=check(component, "--component"),
        version=version,
        environment=check(environment, "--env"),
        policy_override=policy,
        command=list(command),
    )
    for key, value in (tags or {}).items():
        workload.tags[key] = value
    workload.started_at.GetCurrentTime()
    return workload


def agent_listening(socket_path: Path) -> bool:
    """True when an agent accepts connections on `socket_path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(socket_path))
        except OSError:
            return False
    return True


def exec_workload(workload: common_pb2.Workload, command: Sequence[str], socket_path: Path) -> NoReturn:
    """Replace this process with `command` under the shim. Exits 127 when the command is not found."""
    env = build_environment(os.environ, workload, socket_path, shim_path())
    if not agent_listening(socket_path):
        print(
            f"telltale run: no agent listening on {socket_path}; {command[0]} runs unobserved",
            file=sys.stderr,
        )
    try:
        os.execvpe(command[0], list(command), env)
    except FileNotFoundError:
        print(f"telltale run: {command[0]}: command not found", file=sys.stderr)
        sys.exit(127)
    except PermissionError:
        print(f"telltale run: {command[0]}: permission denied", file=sys.stderr)
        sys.exit(126)
