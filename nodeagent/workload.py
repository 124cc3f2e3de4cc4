"""The workload descriptor: how `telltale run` tells the agent what a workload is.

`telltale run` puts it in the TELLTALE_WORKLOAD environment variable; the shim sends it verbatim
in every process-start record, and the agent decodes it here. It is a URL query string:
``id=…&app=…&component=…&version=…&env=…&policy=…&tag=k%3Dv``.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode

from telltale.v1 import common_pb2

MAX_DESCRIPTOR = 512
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


class DescriptorError(ValueError):
    """A workload descriptor or one of its parts is invalid; the message names the part."""


def check_name(value: str, what: str, *, required: bool = False) -> str:
    """Return `value` if it is a valid application/component/environment name.

    Raises DescriptorError naming `what` and the value.
    """
    if not value:
        if required:
            raise DescriptorError(f"{what} is required")
        return value
    if not NAME_RE.fullmatch(value):
        raise DescriptorError(
            f"{what} {value!r}: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return value


def encode(workload: common_pb2.Workload) -> str:
    """The descriptor string for a workload; raises DescriptorError when it would be too long."""
    pairs = [("id", workload.id), ("app", workload.application)]
    for key, value in (
        ("component", workload.component),
        ("version", workload.version),
        ("env", workload.environment),
        ("policy", workload.policy_override),
    ):
        if value:
            pairs.append((key, value))
    pairs.extend(("tag", f"{k}={v}") for k, v in sorted(workload.tags.items()))
    text = urlencode(pairs)
    if len(text.encode()) > MAX_DESCRIPTOR:
        raise DescriptorError(f"workload descriptor is {len(text)} bytes, the limit is {MAX_DESCRIPTOR}")
    return text


def decode(text: str) -> common_pb2.Workload:
    """Parse a descriptor.

    Raises DescriptorError when it has no id or application, or when the application, component or
    environment is not a valid name (see `check_name`).
    """
    workload = common_pb2.Workload()
    for key, value in parse_qsl(text, keep_blank_values=True):
        if key == "id":
            workload.id = value
        elif key == "app":
            workload.application = value
        elif key == "component":
            workload.component = value
        elif key == "version":
            workload.version = value
        elif key == "env":
            workload.environment = value
        elif key == "policy":
            workload.policy_override = value
        elif key == "tag" and "=" in value:
            tag_key, tag_value = value.split("=", 1)
            workload.tags[tag_key] = tag_value
    if not workload.id or not workload.application:
        raise DescriptorError(f"workload descriptor {text[:80]!r} lacks an id or an application")
    check_name(workload.application, "app")
    check_name(workload.component, "component")
    check_name(workload.environment, "env")
    return workload
