"""Checks of the file category (see :mod:`telltale.engine.catalog_files`).

File events reach these checks as :class:`~telltale.engine.facts.FileFacts`, whose paths are
normalised (``.``, ``..`` and doubled slashes removed), so that ``/etc/./shadow`` is
``/etc/shadow``; symbolic links are not resolved.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from telltale.engine.checkbase import Check, Context, Hit, check, failed, flag, globs, normal_path, strings
from telltale.engine.facts import FileFacts
from telltale.engine.linux import O_TRUNC, S_ISGID, S_ISUID, S_IWOTH
from telltale.engine.params import ParamValue
from telltale.v1 import common_pb2

_OPEN = common_pb2.EVENT_KIND_FILE_OPEN
_CHMOD = common_pb2.FILE_CHANGE_KIND_CHMOD
_RENAME = common_pb2.FILE_CHANGE_KIND_RENAME
_UNLINK = common_pb2.FILE_CHANGE_KIND_UNLINK
_LOG_VERBS: dict[int, str] = {_UNLINK: "removed", _RENAME: "renamed"}


def _opened(matches: Callable[[str], bool], what: str) -> Check:
    """A check of successful opens of matching paths."""

    def match(f: FileFacts) -> Hit | None:
        path = f.path
        if not matches(path) or failed(f.event):
            return None
        return Hit(path, f"opened {what} {path}", path=path)

    return match


@check("file.credential_store")
def _credential_store(params: Mapping[str, ParamValue], context: Context) -> Check | None:
    matches = globs(strings(params, "paths"))
    return None if matches is None else _opened(matches, "credential store")


@check("file.process_memory")
def _process_memory(params: Mapping[str, ParamValue], context: Context) -> Check | None:
    matches = globs(strings(params, "paths"))
    return None if matches is None else _opened(matches, "memory file")


@check("file.key_material")
def _key_material(params: Mapping[str, ParamValue], context: Context) -> Check | None:
    keys = globs(strings(params, "paths"))
    if keys is None:
        return None
    ignored = globs(strings(params, "ignore"))
    if ignored is None:
        return _opened(keys, "key material")
    return _opened(lambda path: keys(path) and not ignored(path), "key material")


@check("file.system_config_write")
def _system_config_write(params: Mapping[str, ParamValue], context: Context) -> Check | None:
    matches = globs(strings(params, "paths"))
    if matches is None:
        return None
    verbs: dict[int, str] = {_CHMOD: "changed the mode of", _RENAME: "renamed", _UNLINK: "removed"}

    def match(f: FileFacts) -> Hit | None:
        path = f.path
        event = f.event
        if f.kind == _OPEN:
            if not matches(path) or not event.file.write:
                return None
            verb = "opened for writing"
        else:
            change = event.file_change
            if matches(path):
                verb = verbs.get(change.change, "changed")
            elif change.change == _RENAME:
                path = normal_path(change.new_path)
                verb = "renamed a file to"
                if not matches(path):
                    return None
            else:
                return None
        if failed(event):
            return None
        return Hit(path, f"{verb} system file {path}", path=path)

    return match


@check("file.log_tampering")
def _log_tampering(params: Mapping[str, ParamValue], context: Context) -> Check | None:
    matches = globs(strings(params, "paths"))
    if matches is None:
        return None

    def match(f: FileFacts) -> Hit | None:
        path = f.path
        if not matches(path):
            return None
        event = f.event
        if f.kind == _OPEN:
            detail = event.file
            if not detail.flags & O_TRUNC or not detail.write:
                return None
            verb = "truncated"
        else:
            verb = _LOG_VERBS.get(event.file_change.change, "")
            if not verb:
                return None
        if failed(event):
            return None
        return Hit(path, f"{verb} log {path}", path=path)

    return match


@check("file.permissions_weakened")
def _permissions_weakened(params: Mapping[str, ParamValue], context: Context) -> Check | None:
    bits = (S_ISUID | S_ISGID if flag(params, "setid") else 0) | (
        S_IWOTH if flag(params, "world_writable") else 0
    )
    if not bits:
        return None
    ignored = globs(strings(params, "ignore"))

    def match(f: FileFacts) -> Hit | None:
        change = f.event.file_change
        if change.change != _CHMOD:
            return None
        mode = change.mode
        weakened = mode & bits
        if not weakened or failed(f.event):
            return None
        path = f.path
        if ignored is not None and ignored(path):
            return None
        what = "set-id" if weakened & (S_ISUID | S_ISGID) else "world-writable"
        return Hit(path, f"made {path} {what} (mode {mode & 0o7777:04o})", path=path)

    return match
