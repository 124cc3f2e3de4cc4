"""Linux numbers that events carry raw, with their names: capabilities, ptrace requests, prctl
options, and the bits of open flags and file modes the checks look at."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)
"""Capability names; capability n is bit n of a capability set."""

CAPABILITY_BITS: Mapping[str, int] = MappingProxyType({name: 1 << n for n, name in enumerate(CAPABILITIES)})


def capability_names(mask: int) -> list[str]:
    """The names of the capabilities set in ``mask``, in bit order (unknown bits as ``CAP_n``)."""
    names: list[str] = []
    bit = 0
    while mask:
        if mask & 1:
            names.append(CAPABILITIES[bit] if bit < len(CAPABILITIES) else f"CAP_{bit}")
        mask >>= 1
        bit += 1
    return names


PTRACE_REQUESTS: Mapping[int, str] = MappingProxyType(
    {
        0: "PTRACE_TRACEME",
        1: "PTRACE_PEEKTEXT",
        2: "PTRACE_PEEKDATA",
        3: "PTRACE_PEEKUSER",
        4: "PTRACE_POKETEXT",
        5: "PTRACE_POKEDATA",
        6: "PTRACE_POKEUSER",
        7: "PTRACE_CONT",
        8: "PTRACE_KILL",
        9: "PTRACE_SINGLESTEP",
        12: "PTRACE_GETREGS",
        13: "PTRACE_SETREGS",
        16: "PTRACE_ATTACH",
        17: "PTRACE_DETACH",
        24: "PTRACE_SYSCALL",
        0x4200: "PTRACE_SETOPTIONS",
        0x4204: "PTRACE_GETREGSET",
        0x4205: "PTRACE_SETREGSET",
        0x4206: "PTRACE_SEIZE",
        0x4207: "PTRACE_INTERRUPT",
    }
)

PR_SET_SECUREBITS = 28
PR_SET_MM = 35
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_SET_PTRACER = 0x59616D61
PR_SET_PTRACER_ANY = (1 << 64) - 1  # (unsigned long)-1 as the event carries it

PRCTL_OPTIONS: Mapping[int, str] = MappingProxyType(
    {
        4: "PR_SET_DUMPABLE",
        15: "PR_SET_NAME",
        22: "PR_SET_SECCOMP",
        PR_SET_SECUREBITS: "PR_SET_SECUREBITS",
        PR_SET_MM: "PR_SET_MM",
        38: "PR_SET_NO_NEW_PRIVS",
        PR_CAP_AMBIENT: "PR_CAP_AMBIENT",
        PR_SET_PTRACER: "PR_SET_PTRACER",
    }
)

O_TRUNC = 0o1000

S_ISUID = 0o4000
S_ISGID = 0o2000
S_IWOTH = 0o002

PROT_WRITE = 0x2
PROT_EXEC = 0x4

AF_INET = 2
AF_INET6 = 10
AF_NETLINK = 16
AF_PACKET = 17
