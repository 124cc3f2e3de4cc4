"""Checks of the process category (see :mod:`telltale.engine.catalog_process`).

Execs reach these checks as :class:`~telltale.engine.facts.ExecFacts`, process starts as
:class:`~telltale.engine.facts.StartFacts`, the other kinds as Events.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from telltale.engine.checkbase import (
    Check,
    Context,
    Hit,
    check,
    failed,
    flag,
    globs,
    ints,
    path_or_name_globs,
    resolve_program,
    strings,
    under,
)
from telltale.engine.facts import ExecFacts, StartFacts
from telltale.engine.linux import (
    PR_CAP_AMBIENT,
    PR_CAP_AMBIENT_RAISE,
    PR_SET_PTRACER,
    PR_SET_PTRACER_ANY,
    PRCTL_OPTIONS,
    PTRACE_REQUESTS,
    capability_names,
)
from telltale.engine.params import ParamValue
from telltale.v1 import common_pb2

_DELETED = " (deleted)"
_MEMFD = "/memfd:"
_BY_DESCRIPTOR = frozenset({common_pb2.EXEC_VARIANT_FEXECVE, common_pb2.EXEC_VARIANT_EXECVEAT})
_FD_PATH = re.compile(r"/(?:proc/(?:self|thread-self|[0-9]+)/fd|dev/fd)/[0-9]+")


@check("process.shell_launched")
def _shell_launched(params: Mapping[str, ParamValue], context: Context) -> Check | None:
    shells = frozenset(strings(params, "shells"))
    if not shells:
        return None

    def match(f: ExecFacts) -> Hit | None:
        if f.name not in shells:
            return None
        path = f.path
        return Hit(path, f"launched {path}", path=path)

    return match


def _family(name: str) -> str:
    """A program name without its version suffix: python3.11 and python3 are both python."""
    return name.rstrip("0123456789.-")


@check("process.interpreter_launched")
def _interpreter_launched(params: Mapping[str, ParamValue], context: Context) -> Check | None:
    interpreter = globs(strings(params, "interpreters"), remember=True)
    if interpreter is None:
        return None
    same_ok = flag(params, "ignore_same_program")

    def match(f: ExecFacts) -> Hit | None:
        name = f.name
        if not interpreter(name):
            return None
        path = f.path
        if same_ok and _family(f.event.process.exe.rpartition("/")[2]) == _family(name):
            return None
        return Hit(path, f"launched interpreter {path}", path=path)

    return match


@check("process.exec_from_writable_dir")
def _exec_from_writable_dir(params: Mapping[str, ParamValue], context: Context) -> Check | None:
    prefixes = under(strings(params, "directories"))
    if not prefixes:
        return None

    def match(f: ExecFacts) -> Hit | None:
        path = f.path
        if path.startswith("/") and not path.startswith(prefixes) and "/." not in path and "//" not in path:
            return None  # the common case: an absolute, normal path outside every directory
        full = resolve_program(path, f.event.process.cwd)
        if full is None or not full.startswith(prefixes):
            return None
        return Hit(full, f"ran {full} from a writable directory", path=full)

    return match


def _gained_ids(requested: list[int], current: int) -> bool:
    return current != 0 and 0 in requested


@check("process.privilege_gain")
def _privilege_gain(params: Mapping[str, ParamValue], context: Context) -> Check:
    report_refused = flag(params, "report_refused")

    def match(event: common_pb2.Event) -> Hit | None:
        refused = failed(event)
        if refused and not report_refused:
            return None
        credentials = event.credentials
        process = event.process
        function = credentials.function
        if function == "capset":
            added = credentials.capabilities_effective & ~process.capabilities_effective
            if not added:
                return None
            what = "capabilities " + ",".join(capability_names(added))
        elif _gained_ids(list(credentials.uids), process.euid):
            what = "user id 0"
        elif _gained_ids(list(credentials.gids), process.egid):
            what = "group id 0"
        elif 0 in credentials.groups and process.euid != 0 and process.egid != 0:
            what = "group 0"
        else:
            return None
        subject = f"{what} via {function or 'an unknown call'}"
        if refused:
            return Hit(f"{subject} (refused)", f"tried to gain {subject}, refused")
        return Hit(subject, f"gained {subject}")

    return match


@check("process.ptrace")
def _ptrace(params: Mapping[str, ParamValue], context: Context) -> Check | None:
    requests = frozenset(ints(params, "requests"))
    if not requests:
        return None

    def match(event: common_pb2.Event) -> Hit | None:
        request = event.ptrace.request
        if request not in requests or failed(event):
            return None
        name = PTRACE_REQUESTS.get(request, f"ptrace request {request}")
        return Hit(name, f"used {name} on process {event.ptrace.target_pid}")

    return match


@check("process.memfd_exec")
def _memfd_exec(params: Mapping[str, ParamValue], context: Context) -> Check:
    del params  # no parameters

    def match(f: ExecFacts | StartFacts) -> Hit | None:
        if isinstance(f, StartFacts):
            exe = f.exe
            if not exe.startswith(_MEMFD):
                return None
            return Hit(exe, f"runs {exe}, a program held only in memory", path=exe)
        path = f.path
        if not path:  # fexecve, or execveat of the descriptor itself (AT_EMPTY_PATH)
            if f.event.exec.variant not in _BY_DESCRIPTOR:
                return None
            shown = "a file descriptor"
        elif path.startswith(_MEMFD) or (path[:5] in ("/proc", "/dev/") and _FD_PATH.fullmatch(path)):
            shown = path
        else:
            return None
        return Hit(shown, f"ran a program through {shown}", path=path)

    return match


@check("process.unexpected_binary")
def _unexpected_binary(params: Mapping[str, ParamValue], context: Context) -> Check:
    allowed = path_or_name_globs(strings(params, "allowed"))

    def match(f: StartFacts) -> Hit | None:
        exe = f.exe
        if not exe or (allowed is not None and allowed(exe)):
            return None
        return Hit(exe, f"runs {exe}, which is not on its allowlist", path=exe)

    return match


@check("process.deleted_executable")
def _deleted_executable(params: Mapping[str, ParamValue], context: Context) -> Check:
    del params  # no parameters

    def match(f: StartFacts) -> Hit | None:
        exe = f.exe
        if not exe.endswith(_DELETED) or exe.startswith(_MEMFD):
            return None
        path = exe[: -len(_DELETED)]
        return Hit(path, f"runs {path}, whose file was deleted", path=path)

    return match


def _weakening(option: int, argument: int) -> bool:
    if option == PR_SET_PTRACER:
        return argument == PR_SET_PTRACER_ANY
    if option == PR_CAP_AMBIENT:
        return argument == PR_CAP_AMBIENT_RAISE
    return True


@check("process.security_prctl")
def _security_prctl(params: Mapping[str, ParamValue], context: Context) -> Check | None:
    options = frozenset(ints(params, "options"))
    if not options:
        return None

    def match(event: common_pb2.Event) -> Hit | None:
        detail = event.prctl
        option = detail.option
        if option not in options or not _weakening(option, detail.argument) or failed(event):
            return None
        name = PRCTL_OPTIONS.get(option, f"prctl option {option}")
        return Hit(name, f"weakened its protections with {name}")

    return match
