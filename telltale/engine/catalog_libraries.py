"""Catalog entries of the library and library-call categories: what code a workload loads, how
it maps memory, and which risky library functions it calls."""

from __future__ import annotations

from telltale.engine.alerttype import AlertTypeSpec
from telltale.engine.catalog_process import WRITABLE_DIRECTORIES
from telltale.engine.params import ParamSpec, absolute_path, function_name, glob, tls_version, word
from telltale.v1 import common_pb2 as c

_START = frozenset({c.EVENT_KIND_PROCESS_START})
_CRYPTO = frozenset({c.EVENT_KIND_CRYPTO})
_PATH = frozenset({"path"})

SPECS: tuple[AlertTypeSpec, ...] = (
    AlertTypeSpec(
        id="library.writable_location",
        category=c.CATEGORY_LIBRARY,
        title="Library loaded from a writable location",
        description="A workload loaded a shared library (with dlopen, or with the program when "
        "include_startup is set) from under one of the configured directories, or, with "
        "writable_by_user, from any directory its user can write to.",
        rationale="Whoever can write the directory can replace the library and run code inside "
        "the service; loading code from temporary directories is how injected payloads run.",
        remediation="Install libraries into root-owned, read-only directories and load them from there.",
        params=(
            ParamSpec(
                "directories",
                "strings",
                "Absolute directories; a library anywhere below one of them triggers the alert.",
                WRITABLE_DIRECTORIES,
                absolute_path,
            ),
            ParamSpec(
                "writable_by_user",
                "bool",
                "Also report libraries in any directory writable by the process's user (as the "
                "agent judged it). Noisy for applications installed under their own user.",
                False,
            ),
            ParamSpec("include_startup", "bool", "Also report libraries loaded with the program.", True),
        ),
        default_priority=c.PRIORITY_P2,
        blockable=False,
        event_kinds=frozenset({c.EVENT_KIND_LIBRARY_LOAD}),
        exception_scopes=_PATH,
    ),
    AlertTypeSpec(
        id="library.foreign_preload",
        category=c.CATEGORY_LIBRARY,
        title="Foreign library preloaded",
        description="A workload process started with LD_PRELOAD entries other than telltale's own "
        "shim that match none of the allowed patterns. Fork children are not reported.",
        rationale="A preloaded library runs inside every program it is loaded into and can "
        "intercept any call: it is a favourite of rootkits and credential stealers.",
        remediation="Remove the LD_PRELOAD setting from the service's environment, or allow the "
        "library (a memory allocator such as jemalloc) explicitly.",
        params=(
            ParamSpec(
                "allowed",
                "strings",
                "Patterns of preloaded libraries that are expected ('*' also matches '/').",
                (),
                glob,
            ),
        ),
        default_priority=c.PRIORITY_P2,
        blockable=False,
        event_kinds=_START,
        exception_scopes=_PATH,
    ),
    AlertTypeSpec(
        id="library.unsafe_search_path",
        category=c.CATEGORY_LIBRARY,
        title="Unsafe library search path",
        description="A workload process started with LD_LIBRARY_PATH naming the current directory "
        "(an empty or relative entry) or a directory under one of the configured writable "
        "directories. Fork children are not reported.",
        rationale="The loader looks for libraries there first: whoever can write such a directory "
        "can run code in every program started with it.",
        remediation="Remove the entry from LD_LIBRARY_PATH; set the run path of the binaries at "
        "build time instead.",
        params=(
            ParamSpec(
                "directories",
                "strings",
                "Absolute directories whose entries count as unsafe.",
                WRITABLE_DIRECTORIES,
                absolute_path,
            ),
        ),
        default_priority=c.PRIORITY_P3,
        blockable=False,
        event_kinds=_START,
        exception_scopes=_PATH,
    ),
    AlertTypeSpec(
        id="library.write_execute_memory",
        category=c.CATEGORY_LIBRARY,
        title="Writable and executable memory",
        description="A workload mapped or protected memory both writable and executable (mmap or "
        "mprotect with PROT_WRITE and PROT_EXEC). Programs matching ignore_programs (just-in-time "
        "compilers) are not reported; failed calls are ignored.",
        rationale="Memory that is writable and executable at once is where injected shellcode "
        "runs; hardened programs never need it outside of just-in-time compilers.",
        remediation="Find the library making the mapping (the subject names it) and update or "
        "rebuild it; except a runtime that compiles code just in time by binary.",
        params=(
            ParamSpec(
                "ignore_programs",
                "strings",
                "Patterns of programs (paths, '*' also matches '/') that legitimately need such memory.",
                ("*/java", "*/node", "*/nodejs", "*/dotnet", "*/mono", "*/mono-sgen", "*/luajit*", "*/pypy*"),
                glob,
            ),
        ),
        default_priority=c.PRIORITY_P3,
        blockable=False,
        event_kinds=frozenset({c.EVENT_KIND_MEMORY_PROTECT}),
    ),
    AlertTypeSpec(
        id="call.unsafe_function",
        category=c.CATEGORY_LIBRARY_CALL,
        title="Unsafe library function",
        description="A workload called a C library function that cannot bound what it writes "
        "(gets, strcpy, sprintf, ...) or creates temporary files unsafely. The subject names the "
        "function and the module that called it.",
        rationale="These functions are the classic source of buffer overflows and race "
        "conditions; their presence in a network service is a latent vulnerability.",
        remediation="Replace them with bounded equivalents (fgets, snprintf, strlcpy, mkstemp) in "
        "the calling module, or update the library that calls them.",
        params=(
            ParamSpec(
                "functions",
                "strings",
                "Function names that trigger the alert.",
                (
                    "gets",
                    "strcpy",
                    "strcat",
                    "sprintf",
                    "vsprintf",
                    "stpcpy",
                    "getwd",
                    "mktemp",
                    "tmpnam",
                    "tempnam",
                ),
                function_name,
            ),
        ),
        default_priority=c.PRIORITY_P4,
        blockable=False,
        event_kinds=frozenset({c.EVENT_KIND_UNSAFE_CALL}),
    ),
    AlertTypeSpec(
        id="call.weak_crypto",
        category=c.CATEGORY_LIBRARY_CALL,
        title="Weak cryptography",
        description="A workload used a weak or broken cryptographic algorithm (MD5, SHA-1, DES, "
        "RC4, ...). Algorithm and purpose names are compared without case; uses whose purpose is "
        "in ignore_purposes are not reported.",
        rationale="Broken hashes allow forged signatures and collisions; broken ciphers expose the "
        "data they were meant to protect.",
        remediation="Move to SHA-256 or better for digests and signatures, AES-GCM or "
        "ChaCha20-Poly1305 for encryption.",
        params=(
            ParamSpec(
                "algorithms",
                "strings",
                "Names of weak algorithms.",
                ("MD4", "MD5", "SHA1", "DES", "3DES", "RC2", "RC4", "Blowfish"),
                word,
            ),
            ParamSpec(
                "ignore_purposes",
                "strings",
                "Purposes (digest, signature, cipher, ...) that are not reported, e.g. digest for checksums.",
                (),
                word,
            ),
        ),
        default_priority=c.PRIORITY_P3,
        blockable=False,
        event_kinds=_CRYPTO,
    ),
    AlertTypeSpec(
        id="call.old_tls",
        category=c.CATEGORY_LIBRARY_CALL,
        title="Outdated TLS version allowed",
        description="A workload allowed a TLS or SSL protocol version older than the configured "
        "ones (SSLv2, SSLv3, TLS 1.0, TLS 1.1).",
        rationale="Old protocol versions have practical attacks (POODLE, BEAST) and weak cipher "
        "suites; standards and regulations forbid them.",
        remediation="Set the minimum protocol version to TLS 1.2 in the service's TLS configuration.",
        params=(
            ParamSpec(
                "versions",
                "strings",
                "Protocol versions that must not be allowed.",
                ("SSLv2", "SSLv3", "TLSv1.0", "TLSv1.1"),
                tls_version,
            ),
        ),
        default_priority=c.PRIORITY_P3,
        blockable=False,
        event_kinds=_CRYPTO,
    ),
)
