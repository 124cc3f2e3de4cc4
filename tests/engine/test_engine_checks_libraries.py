"""Library, memory and library-call alert types: what fires each, what does not, their
parameters and exceptions."""

from __future__ import annotations

import pytest
from casetable import Case, fires, quiet, uncovered
from eventkit import NOW, SHOP_API, call, compiled, crypto, fired, library, memory, start

from telltale.v1 import common_pb2

WRITABLE = "library.writable_location"
PRELOAD = "library.foreign_preload"
SEARCH = "library.unsafe_search_path"
WX = "library.write_execute_memory"
UNSAFE = "call.unsafe_function"
WEAK = "call.weak_crypto"
TLS = "call.old_tls"

RWX, RX, RW = 7, 5, 3

LIBRARY_CASES = [
    fires("dlopen tmp", WRITABLE, library("/tmp/x.so"), "/tmp/x.so"),
    fires("startup shm", WRITABLE, library("/dev/shm/l.so", at_start=True), "/dev/shm/l.so"),
    fires("dotted", WRITABLE, library("/usr/lib/../../tmp/x.so"), "/tmp/x.so"),
    quiet("system", WRITABLE, library("/usr/lib/x86_64-linux-gnu/libz.so.1")),
    quiet("user dir", WRITABLE, library("/srv/venv/lib/_ssl.so", writable_dir=True)),
    fires(
        "user dir reported",
        WRITABLE,
        library("/srv/venv/lib/_ssl.so", writable_dir=True),
        "/srv/venv/lib/_ssl.so",
        params="{writable_by_user: true}",
    ),
    quiet(
        "startup excluded", WRITABLE, library("/tmp/x.so", at_start=True), params="{include_startup: false}"
    ),
    fires("preload", PRELOAD, start(preload=["/tmp/evil.so"]), "/tmp/evil.so"),
    fires(
        "second entry",
        PRELOAD,
        start(preload=["/usr/lib/libjemalloc.so.2", "/tmp/e.so"]),
        "/tmp/e.so",
        params="{allowed: ['*/libjemalloc.so*']}",
    ),
    quiet(
        "allowed",
        PRELOAD,
        start(preload=["/usr/lib/libjemalloc.so.2"]),
        params="{allowed: ['*/libjemalloc*']}",
    ),
    quiet("none", PRELOAD, start()),
    quiet("forked", PRELOAD, start(preload=["/tmp/evil.so"], forked=True)),
    fires("empty entry", SEARCH, start(library_path=["/opt/lib", ""]), "(empty: the current directory)"),
    fires("relative", SEARCH, start(library_path=["lib"]), "lib"),
    fires("tmp", SEARCH, start(library_path=["/tmp"]), "/tmp"),
    fires("under tmp", SEARCH, start(library_path=["/var/tmp/x/"]), "/var/tmp/x/"),
    quiet("system", SEARCH, start(library_path=["/opt/vendor/lib", "/usr/local/lib"])),
    quiet("tmp-like", SEARCH, start(library_path=["/tmpfs/lib"])),
    quiet("configured", SEARCH, start(library_path=["/tmp/lib"]), params="{directories: [/scratch]}"),
    fires("rwx", WX, memory(RWX), "/usr/lib/libffi.so.8"),
    fires("no caller", WX, memory(RWX, caller=""), "/usr/bin/python3"),
    quiet("rx", WX, memory(RX)),
    quiet("rw", WX, memory(RW)),
    quiet("jit", WX, memory(RWX, exe="/usr/lib/jvm/bin/java")),
    quiet("failed", WX, memory(RWX, errno=13)),
    fires(
        "jit reported",
        WX,
        memory(RWX, exe="/usr/bin/node"),
        "/usr/lib/libffi.so.8",
        params="{ignore_programs: []}",
    ),
]

CALL_CASES = [
    fires("strcpy", UNSAFE, call("strcpy"), "strcpy in /usr/lib/libold.so.1"),
    fires("gets without caller", UNSAFE, call("gets", caller=""), "gets"),
    quiet("strncpy", UNSAFE, call("strncpy")),
    quiet("not listed", UNSAFE, call("strcpy"), params="{functions: [gets]}"),
    fires("md5", WEAK, crypto(algorithm="MD5", purpose="signature"), "MD5 (signature)"),
    fires("sha-1 spelling", WEAK, crypto(algorithm="sha-1"), "sha-1"),
    quiet("sha256", WEAK, crypto(algorithm="SHA256", purpose="digest")),
    quiet("tls event", WEAK, crypto(version="TLSv1.0")),
    quiet(
        "ignored purpose",
        WEAK,
        crypto(algorithm="MD5", purpose="digest"),
        params="{ignore_purposes: [digest]}",
    ),
    fires("tls 1.0", TLS, crypto(version="TLSv1"), "TLSv1.0"),
    fires("ssl3", TLS, crypto(version="SSLv3"), "SSLv3"),
    fires("tls 1.1 spelled", TLS, crypto(version="TLS 1.1"), "TLSv1.1"),
    quiet("tls 1.2", TLS, crypto(version="TLSv1.2")),
    quiet("algorithm event", TLS, crypto(algorithm="MD5")),
    fires("stricter", TLS, crypto(version="TLSv1.2"), "TLSv1.2", params="{versions: [TLSv1.2]}"),
]


@pytest.mark.parametrize("case", [*LIBRARY_CASES, *CALL_CASES])
def test_library_and_call_case(case: Case) -> None:
    """Each library or library-call case fires with exactly its expected subjects, or stays quiet."""
    assert case.run() == list(case.expected)


def test_every_library_and_call_type_has_a_firing_and_a_quiet_case() -> None:
    """The tables cover every library and library-call alert type both ways."""
    assert uncovered(LIBRARY_CASES, common_pb2.CATEGORY_LIBRARY) == []
    assert uncovered(CALL_CASES, common_pb2.CATEGORY_LIBRARY_CALL) == []


def test_write_execute_memory_exception_by_binary() -> None:
    """A runtime compiling code just in time can be excepted by binary."""
    policy = compiled(
        f"""
        {WX}:
          exceptions:
            - {{binary: /opt/luajit/*, reason: JIT}}
        """
    )
    assert fired(policy, memory(RWX, exe="/opt/luajit/bin/app")) == []
    assert fired(policy, memory(RWX, exe="/srv/app/bin/app")) == ["/usr/lib/libffi.so.8"]


def test_library_calls_summaries() -> None:
    """Summaries name the function and the library involved."""
    policy = compiled(f"{UNSAFE}: {{}}\n{TLS}: {{}}\n")
    (unsafe,) = policy.evaluate(call("sprintf"), SHOP_API, NOW)
    assert unsafe.summary == "shop/api called unsafe function sprintf in /usr/lib/libold.so.1"
    assert unsafe.category == common_pb2.CATEGORY_LIBRARY_CALL
    (tls,) = policy.evaluate(crypto(version="SSLv3"), SHOP_API, NOW)
    assert tls.summary == "shop/api allows outdated protocol version SSLv3 in libcrypto.so.3"
