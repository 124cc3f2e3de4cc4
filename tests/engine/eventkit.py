"""Builders of events, host states and small policies for the engine's tests."""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from telltale.engine.countries import NO_COUNTRIES, CountryLookup
from telltale.engine.evaluate import CompiledPolicy, Finding
from telltale.engine.linux import CAPABILITY_BITS
from telltale.engine.policy import parse_document
from telltale.v1 import agent_pb2, common_pb2

NS = 1_000_000_000
NOW = 1_800_000_000 * NS
SHOP_API = common_pb2.Workload(id="w-1", application="shop", component="api")
OTHER = common_pb2.Workload(id="w-2", application="billing", component="worker")

K = common_pb2  # event kinds and enums, shortened for tables
SOCK_STREAM, SOCK_DGRAM, SOCK_RAW, SOCK_NONBLOCK = 1, 2, 3, 0o4000
AF_INET, AF_INET6, AF_NETLINK, AF_PACKET = 2, 10, 16, 17


def compiled(rules: str, *, countries: CountryLookup = NO_COUNTRIES) -> CompiledPolicy:
    """Compile a policy whose spec.rules is the given YAML."""
    text = "apiVersion: telltale.dev/v1\nkind: AlertPolicy\nmetadata: {name: Test}\nspec:\n  rules:\n"
    document = text + textwrap.indent(textwrap.dedent(rules), "    ")
    return CompiledPolicy.compile(parse_document(document), countries=countries)


def subjects(findings: list[Finding]) -> list[str]:
    return [f.subject for f in findings]


def fired(
    policy: CompiledPolicy, event: common_pb2.Event, workload: common_pb2.Workload = SHOP_API
) -> list[str]:
    """The subjects of the findings ``event`` raises."""
    return subjects(policy.evaluate(event, workload, NOW))


def process(
    *,
    exe: str = "/usr/bin/python3",
    euid: int = 1000,
    egid: int = 1000,
    forked: bool = False,
    cwd: str = "/srv/app",
    caps: Iterable[str] = (),
    permitted: Iterable[str] = (),
    secrets: Iterable[str] = (),
    preload: Iterable[str] = (),
    library_path: Iterable[str] = (),
) -> common_pb2.ProcessInfo:
    return common_pb2.ProcessInfo(
        pid=10,
        exe=exe,
        cwd=cwd,
        uid=euid,
        euid=euid,
        gid=egid,
        egid=egid,
        forked=forked,
        capabilities_effective=sum(CAPABILITY_BITS[c] for c in caps),
        capabilities_permitted=sum(CAPABILITY_BITS[c] for c in permitted),
        secret_env_names=list(secrets),
        ld_preload=list(preload),
        ld_library_path=list(library_path),
    )


def event(
    kind: common_pb2.EventKind.ValueType,
    *,
    errno: int | None = None,
    proc: common_pb2.ProcessInfo | None = None,
    caller: str = "",
    **detail: object,
) -> common_pb2.Event:
    """An event of ``kind`` with one detail set; ``errno`` sets a known call result."""
    built = common_pb2.Event(
        kind=kind,
        count=1,
        process=proc if proc is not None else process(),
        caller_module=caller,
        **detail,  # type: ignore[arg-type]
    )
    if errno is not None:
        built.result.CopyFrom(
            common_pb2.CallResult(known=True, return_value=-1 if errno else 0, error_number=errno)
        )
    return built


def exec_event(
    path: str,
    *,
    exe: str = "/usr/bin/python3",
    cwd: str = "/srv/app",
    variant: common_pb2.ExecVariant.ValueType = common_pb2.EXEC_VARIANT_EXECVE,
) -> common_pb2.Event:
    return event(
        K.EVENT_KIND_EXEC,
        proc=process(exe=exe, cwd=cwd),
        exec=common_pb2.ExecDetail(path=path, argv=[path], variant=variant),
    )


def socket_event(
    kind: common_pb2.EventKind.ValueType,
    address: str,
    port: int,
    *,
    family: str = "",
    sock_type: int = SOCK_STREAM,
    errno: int = 0,
    exe: str = "/usr/bin/python3",
) -> common_pb2.Event:
    family = family or ("inet6" if ":" in address else "inet")
    return event(
        kind,
        errno=errno,
        proc=process(exe=exe),
        socket=common_pb2.SocketDetail(
            address=common_pb2.SocketAddress(family=family, address=address, port=port),
            domain=AF_INET6 if family == "inet6" else AF_INET,
            type=sock_type,
        ),
    )


def send(address: str, port: int, *, sock_type: int = SOCK_DGRAM) -> common_pb2.Event:
    return socket_event(K.EVENT_KIND_SEND, address, port, sock_type=sock_type)


def connect(address: str, port: int = 443, **kwargs: object) -> common_pb2.Event:
    return socket_event(K.EVENT_KIND_CONNECT, address, port, **kwargs)  # type: ignore[arg-type]


def socket_created(domain: int, sock_type: int, protocol: int = 0, *, errno: int = 0) -> common_pb2.Event:
    return event(
        K.EVENT_KIND_SOCKET,
        errno=errno,
        socket=common_pb2.SocketDetail(domain=domain, type=sock_type, protocol=protocol),
    )


def start(**kwargs: object) -> common_pb2.Event:
    """A process start; keyword arguments describe the process (see :func:`process`)."""
    return event(K.EVENT_KIND_PROCESS_START, proc=process(**kwargs))  # type: ignore[arg-type]


def opened(path: str, *, write: bool = False, flags: int = 0, errno: int = 0) -> common_pb2.Event:
    return event(
        K.EVENT_KIND_FILE_OPEN, errno=errno, file=common_pb2.FileDetail(path=path, write=write, flags=flags)
    )


def changed(
    change: common_pb2.FileChangeKind.ValueType,
    path: str,
    *,
    new_path: str = "",
    mode: int = 0,
    errno: int = 0,
) -> common_pb2.Event:
    return event(
        K.EVENT_KIND_FILE_CHANGE,
        errno=errno,
        file_change=common_pb2.FileChangeDetail(change=change, path=path, new_path=new_path, mode=mode),
    )


def credentials(
    function: str,
    *,
    uids: Iterable[int] = (),
    gids: Iterable[int] = (),
    groups: Iterable[int] = (),
    caps: Iterable[str] = (),
    euid: int = 1000,
    egid: int = 1000,
    held: Iterable[str] = (),
    errno: int = 0,
) -> common_pb2.Event:
    return event(
        K.EVENT_KIND_CREDENTIALS,
        errno=errno,
        proc=process(euid=euid, egid=egid, caps=held),
        credentials=common_pb2.CredentialDetail(
            function=function,
            uids=list(uids),
            gids=list(gids),
            groups=list(groups),
            capabilities_effective=sum(CAPABILITY_BITS[c] for c in caps),
        ),
    )


def ptrace(request: int, *, errno: int = 0) -> common_pb2.Event:
    return event(
        K.EVENT_KIND_PTRACE, errno=errno, ptrace=common_pb2.PtraceDetail(request=request, target_pid=77)
    )


def prctl(option: int, argument: int = 0, *, errno: int = 0) -> common_pb2.Event:
    return event(
        K.EVENT_KIND_PRCTL, errno=errno, prctl=common_pb2.PrctlDetail(option=option, argument=argument)
    )


def library(path: str, *, at_start: bool = False, writable_dir: bool = False) -> common_pb2.Event:
    return event(
        K.EVENT_KIND_LIBRARY_LOAD,
        library=common_pb2.LibraryDetail(path=path, at_start=at_start, writable_dir=writable_dir),
    )


def memory(
    protection: int, *, exe: str = "/usr/bin/python3", caller: str = "/usr/lib/libffi.so.8", errno: int = 0
) -> common_pb2.Event:
    return event(
        K.EVENT_KIND_MEMORY_PROTECT,
        errno=errno,
        proc=process(exe=exe),
        caller=caller,
        memory=common_pb2.MemoryDetail(function="mprotect", protection=protection, length=4096),
    )


def call(function: str, *, caller: str = "/usr/lib/libold.so.1") -> common_pb2.Event:
    return event(K.EVENT_KIND_UNSAFE_CALL, caller=caller, call=common_pb2.CallDetail(function=function))


def crypto(
    *, algorithm: str = "", version: str = "", purpose: str = "", lib: str = "libcrypto.so.3"
) -> common_pb2.Event:
    return event(
        K.EVENT_KIND_CRYPTO,
        crypto=common_pb2.CryptoDetail(
            algorithm=algorithm, protocol_version=version, purpose=purpose, library=lib
        ),
    )


def resolve(name: str, *addresses: str) -> common_pb2.Event:
    return event(
        K.EVENT_KIND_RESOLVE,
        resolve=common_pb2.ResolveDetail(name=name, addresses=list(addresses), function="getaddrinfo"),
    )


# Host state.


def interface(
    name: str, *addresses: str, up: bool = True, promiscuous: bool = False
) -> agent_pb2.InterfaceState:
    return agent_pb2.InterfaceState(name=name, up=up, promiscuous=promiscuous, addresses=list(addresses))


def listener(
    address: str, port: int, *, protocol: str = "tcp", exe: str = "/usr/sbin/sshd"
) -> agent_pb2.ListeningSocket:
    family = "inet6" if ":" in address else "inet"
    return agent_pb2.ListeningSocket(
        protocol=protocol,
        address=common_pb2.SocketAddress(family=family, address=address, port=port),
        pid=42,
        exe=exe,
    )


LOOPBACK = interface("lo", "127.0.0.1/8", "::1/128")
PRIVATE_ETH = interface("eth0", "10.0.0.5/24", "fe80::1/64")
PUBLIC_ETH = interface("eth1", "8.8.4.4/24")


def node_state(
    *,
    sysctls: Mapping[str, str] | None = None,
    interfaces: Iterable[agent_pb2.InterfaceState] = (LOOPBACK, PRIVATE_ETH),
    listening: Iterable[agent_pb2.ListeningSocket] = (),
    seconds: int = 0,
) -> agent_pb2.NodeState:
    state = agent_pb2.NodeState(
        full=True,
        interfaces=list(interfaces),
        listening=list(listening),
        sysctls=dict(sysctls or {}),
        kernel="6.1.0",
    )
    if seconds:
        state.time.FromSeconds(seconds)
    return state


@dataclass
class Countries:
    """A country lookup from a plain mapping of address to code (a test double)."""

    codes: dict[str, str] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)

    def country(self, address: str) -> str | None:
        self.asked.append(address)
        return self.codes.get(address)
