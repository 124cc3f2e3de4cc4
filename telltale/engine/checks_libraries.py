"""Checks of the library and library-call categories (see
:mod:`telltale.engine.catalog_libraries`).

Process starts reach these checks as :class:`~telltale.engine.facts.StartFacts`, the other
kinds as Events.
"""

from __future__ import annotations

from collections.abc import Mapping

from telltale.engine.checkbase import (
    Check,
    Context,
    Hit,
    check,
    failed,
    flag,
    globs,
    normal_path,
    program_of,
    strings,
    under,
)
from telltale.engine.facts import StartFacts
from telltale.engine.linux import PROT_EXEC, PROT_WRITE
from telltale.engine.params import ParamValue
from telltale.v1 import common_pb2

_WX = PROT_WRITE | PROT_EXEC


@check("library.writable_location")
def _writable_location(params: Mapping[str, ParamValue], context: Context) -> Check | None:
    prefixes = under(strings(params, "directories"))
    by_user = flag(params, "writable_by_user")
    if not prefixes and not by_user:
        return None
    include_startup = flag(params, "include_startup")

    def match(event: common_pb2.Event) -> Hit | None:
        library = event.library
        path = normal_path(library.path)
        if not path.startswith(prefixes) and not (by_user and library.writable_dir):
            return None
        if (library.at_start and not include_startup) or failed(event):
            return None
        return Hit(path, f"loaded library {path} from a writable location", path=path)

    return match


@check("library.foreign_preload")
def _foreign_preload(params: Mapping[str, ParamValue], context: Context) -> Check:
    allowed = globs(strings(params, "allowed"))

    def match(f: StartFacts) -> Hit | None:
        entries = f.process.ld_preload
        if not entries:
            return None
        foreign = [entry for entry in entries if allowed is None or not allowed(entry)]
        if not foreign:
            return None
        return Hit(foreign[0], f"runs {f.program} with LD_PRELOAD={':'.join(foreign)}", path=foreign[0])

    return match


@check("library.unsafe_search_path")
def _unsafe_search_path(params: Mapping[str, ParamValue], context: Context) -> Check:
    prefixes = under(strings(params, "directories"))

    def unsafe(entry: str) -> bool:
        return not entry.startswith("/") or (normal_path(entry).rstrip("/") + "/").startswith(prefixes)

    def match(f: StartFacts) -> Hit | None:
        for entry in f.process.ld_library_path:
            if unsafe(entry):
                shown = entry or "(empty: the current directory)"
                return Hit(shown, f"runs {f.program} with LD_LIBRARY_PATH entry {shown}", path=entry)
        return None

    return match


@check("library.write_execute_memory")
def _write_execute_memory(params: Mapping[str, ParamValue], context: Context) -> Check:
    ignored = globs(strings(params, "ignore_programs"))

    def match(event: common_pb2.Event) -> Hit | None:
        memory = event.memory
        if memory.protection & _WX != _WX or failed(event):
            return None
        process = event.process
        if ignored is not None and ignored(process.exe):
            return None
        module = event.caller_module or program_of(process)
        function = memory.function or "a mapping"
        return Hit(
            module, f"made memory writable and executable ({function}, {memory.length} bytes) in {module}"
        )

    return match


@check("call.unsafe_function")
def _unsafe_function(params: Mapping[str, ParamValue], context: Context) -> Check | None:
    functions = frozenset(strings(params, "functions"))
    if not functions:
        return None

    def match(event: common_pb2.Event) -> Hit | None:
        function = event.call.function
        if function not in functions:
            return None
        module = event.caller_module
        subject = f"{function} in {module}" if module else function
        return Hit(subject, f"called unsafe function {subject}")

    return match


def _token(name: str) -> str:
    return name.upper().replace("-", "").replace("_", "").replace(" ", "")


@check("call.weak_crypto")
def _weak_crypto(params: Mapping[str, ParamValue], context: Context) -> Check | None:
    algorithms = frozenset(_token(a) for a in strings(params, "algorithms"))
    if not algorithms:
        return None
    ignored = frozenset(_token(p) for p in strings(params, "ignore_purposes"))

    def match(event: common_pb2.Event) -> Hit | None:
        crypto = event.crypto
        algorithm = crypto.algorithm
        if not algorithm or _token(algorithm) not in algorithms or _token(crypto.purpose) in ignored:
            return None
        subject = f"{algorithm} ({crypto.purpose})" if crypto.purpose else algorithm
        where = f" in {crypto.library}" if crypto.library else ""
        return Hit(subject, f"uses weak cryptography {subject}{where}")

    return match


def tls_version_token(version: str) -> str:
    """A protocol version name in one spelling: ``tlsv1``, ``TLS 1.0`` and ``TLSv1.0`` agree."""
    token = version.upper().replace(" ", "").replace("_", ".")
    if token.startswith("TLS") and not token.startswith("TLSV"):
        token = "TLSV" + token[3:]
    elif token.startswith("SSL") and not token.startswith("SSLV"):
        token = "SSLV" + token[3:]
    return "TLSV1.0" if token == "TLSV1" else token


@check("call.old_tls")
def _old_tls(params: Mapping[str, ParamValue], context: Context) -> Check | None:
    versions = {tls_version_token(v): v for v in strings(params, "versions")}
    if not versions:
        return None

    def match(event: common_pb2.Event) -> Hit | None:
        crypto = event.crypto
        version = crypto.protocol_version
        name = versions.get(tls_version_token(version)) if version else None
        if name is None:
            return None
        where = f" in {crypto.library}" if crypto.library else ""
        return Hit(name, f"allows outdated protocol version {name}{where}")

    return match
