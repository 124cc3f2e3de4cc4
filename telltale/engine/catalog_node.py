"""Catalog entries of the node category: how workloads run on their host, and the host's own
state as agents report it.

The first three types are judged on workload events (a process start says its user, its
capabilities, its environment); the others on host state reports (``node_state``), once per node.
Host state types carry an ``ignore_nodes`` parameter, since exceptions scope applications, not
nodes.
"""

from __future__ import annotations

from telltale.engine.alerttype import AlertTypeSpec
from telltale.engine.params import (
    ParamSpec,
    capability,
    cidr,
    glob,
    non_negative,
    port,
    sysctl_expectation,
    sysctl_name,
)
from telltale.v1 import common_pb2 as c

_START = frozenset({c.EVENT_KIND_PROCESS_START})
_NONE: frozenset[c.EventKind.ValueType] = frozenset()
_IGNORE_NODES = ParamSpec(
    "ignore_nodes",
    "strings",
    "Patterns of node ids on which this host state is expected.",
    (),
    glob,
)

SPECS: tuple[AlertTypeSpec, ...] = (
    AlertTypeSpec(
        id="node.workload_as_root",
        category=c.CATEGORY_NODE,
        title="Workload running as root",
        description="A workload process started a new program image with effective user id 0. Fork "
        "children are not reported separately.",
        rationale="A compromised process running as root owns the host; services should run under a "
        "dedicated unprivileged user.",
        remediation="Run the workload under an unprivileged user and grant only the capabilities it needs.",
        params=(),
        default_priority=c.PRIORITY_P3,
        blockable=False,
        event_kinds=_START,
        exception_scopes=frozenset({"path"}),
    ),
    AlertTypeSpec(
        id="node.dangerous_capabilities",
        category=c.CATEGORY_NODE,
        title="Dangerous capabilities",
        description="A workload process started a new program image holding one of the configured "
        "capabilities in its effective set (or its permitted set, with include_permitted). With "
        "ignore_root, processes with effective user id 0 are left to node.workload_as_root.",
        rationale="Capabilities such as CAP_SYS_ADMIN, CAP_SYS_PTRACE or CAP_NET_RAW are nearly as "
        "powerful as root: a compromised process holding them can escape its confinement, read "
        "other processes or sniff the network.",
        remediation="Drop every capability the service does not need (systemd "
        "CapabilityBoundingSet=, setcap on the binary with only what it needs).",
        params=(
            ParamSpec(
                "capabilities",
                "strings",
                "Capability names that trigger the alert.",
                (
                    "CAP_SYS_ADMIN",
                    "CAP_SYS_PTRACE",
                    "CAP_SYS_MODULE",
                    "CAP_SYS_RAWIO",
                    "CAP_SYS_BOOT",
                    "CAP_NET_ADMIN",
                    "CAP_NET_RAW",
                    "CAP_DAC_READ_SEARCH",
                    "CAP_DAC_OVERRIDE",
                    "CAP_SETUID",
                    "CAP_SETGID",
                    "CAP_SETFCAP",
                    "CAP_MAC_ADMIN",
                    "CAP_MAC_OVERRIDE",
                    "CAP_BPF",
                    "CAP_PERFMON",
                ),
                capability,
            ),
            ParamSpec("include_permitted", "bool", "Also look at the permitted set.", False),
            ParamSpec("ignore_root", "bool", "Do not report processes running as root.", True),
        ),
        default_priority=c.PRIORITY_P2,
        blockable=False,
        event_kinds=_START,
        exception_scopes=frozenset({"path"}),
    ),
    AlertTypeSpec(
        id="node.secret_environment",
        category=c.CATEGORY_NODE,
        title="Secrets in environment variables",
        description="A workload process started with environment variables whose names look like "
        "secrets (passwords, tokens, keys; the agent decides, and never sends the values). Names "
        "matching ignore_names are not reported; fork children are not reported.",
        rationale="The environment is inherited by every child process, shows up in /proc, crash "
        "reports and debugging output, and is often logged: secrets there leak easily.",
        remediation="Pass secrets through files readable only by the service (or a secret store) "
        "and clear them from the environment after start.",
        params=(
            ParamSpec(
                "ignore_names",
                "strings",
                "Patterns of variable names that are not reported.",
                (),
                glob,
            ),
        ),
        default_priority=c.PRIORITY_P3,
        blockable=False,
        event_kinds=_START,
    ),
    AlertTypeSpec(
        id="node.ip_forwarding",
        category=c.CATEGORY_NODE,
        title="IP forwarding enabled",
        description="The host forwards IP packets between its interfaces: one of the configured "
        "kernel settings is not 0.",
        rationale="A host that forwards packets acts as a router: an intruder can use it to reach "
        "networks that should be separated from each other.",
        remediation="Set the settings to 0 (sysctl -w net.ipv4.ip_forward=0, and persist it in "
        "/etc/sysctl.d) unless the host is a router or container host; list those in "
        "ignore_nodes.",
        params=(
            ParamSpec(
                "sysctls",
                "strings",
                "Kernel settings that enable forwarding.",
                ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"),
                sysctl_name,
            ),
            _IGNORE_NODES,
        ),
        default_priority=c.PRIORITY_P3,
        blockable=False,
        event_kinds=_NONE,
        node_state=True,
    ),
    AlertTypeSpec(
        id="node.promiscuous_interface",
        category=c.CATEGORY_NODE,
        title="Interface in promiscuous mode",
        description="A network interface of the host is in promiscuous mode: it receives every "
        "packet on its link, not only those addressed to it.",
        rationale="Promiscuous mode is what packet sniffers use to capture other hosts' traffic.",
        remediation="Find the process capturing on the interface; bridges and monitoring "
        "interfaces that need it can be listed in ignore_interfaces.",
        params=(
            ParamSpec(
                "ignore_interfaces",
                "strings",
                "Patterns of interface names that may be promiscuous, e.g. br-*.",
                (),
                glob,
            ),
            _IGNORE_NODES,
        ),
        default_priority=c.PRIORITY_P2,
        blockable=False,
        event_kinds=_NONE,
        node_state=True,
    ),
    AlertTypeSpec(
        id="node.aslr_disabled",
        category=c.CATEGORY_NODE,
        title="Address space randomisation weakened",
        description="The host's kernel.randomize_va_space setting is below minimum (2: stack, "
        "libraries, heap and program all randomised).",
        rationale="Without full address space layout randomisation, memory corruption bugs are "
        "far easier to turn into working exploits.",
        remediation="Set kernel.randomize_va_space to 2 and persist it in /etc/sysctl.d.",
        params=(
            ParamSpec("minimum", "int", "The lowest acceptable value.", 2, non_negative),
            _IGNORE_NODES,
        ),
        default_priority=c.PRIORITY_P2,
        blockable=False,
        event_kinds=_NONE,
        node_state=True,
    ),
    AlertTypeSpec(
        id="node.ptrace_scope_permissive",
        category=c.CATEGORY_NODE,
        title="Permissive ptrace scope",
        description="The host's kernel.yama.ptrace_scope setting is below minimum (0 lets any "
        "process trace any other process of the same user). Hosts that do not report the "
        "setting are not judged.",
        rationale="With a permissive scope, one compromised process can read the memory and "
        "secrets of every other process running as the same user.",
        remediation="Set kernel.yama.ptrace_scope to 1 (or higher) and persist it in /etc/sysctl.d.",
        params=(
            ParamSpec("minimum", "int", "The lowest acceptable value.", 1, non_negative),
            _IGNORE_NODES,
        ),
        default_priority=c.PRIORITY_P3,
        blockable=False,
        event_kinds=_NONE,
        node_state=True,
    ),
    AlertTypeSpec(
        id="node.public_listener",
        category=c.CATEGORY_NODE,
        title="Listener on a public interface",
        description="A socket on the host listens on a public address, or on the wildcard address "
        "while the host has a public address on an interface that is up. Private, shared, "
        "loopback, link-local and reserved ranges, and the configured internal_networks, are not "
        "public.",
        rationale="Whatever listens on a public address is reachable from the internet unless a "
        "firewall says otherwise; every such service is attack surface.",
        remediation="Bind the service to an internal address or loopback, or filter the port; list "
        "intended public ports in ignore_ports or except the listener's binary.",
        params=(
            ParamSpec("ignore_ports", "ints", "Ports on which public listeners are expected.", (), port),
            ParamSpec(
                "internal_networks",
                "strings",
                "More networks (CIDR notation) to treat as internal.",
                (),
                cidr,
            ),
            _IGNORE_NODES,
        ),
        default_priority=c.PRIORITY_P2,
        blockable=False,
        event_kinds=_NONE,
        exception_scopes=frozenset({"destination"}),
        node_state=True,
    ),
    AlertTypeSpec(
        id="node.kernel_hardening",
        category=c.CATEGORY_NODE,
        title="Kernel hardening setting off",
        description="A kernel setting the host reports differs from its expected value. Each "
        "expectation reads NAME=N, NAME>=N or NAME<=N; settings the host does not report are not "
        "judged.",
        rationale="These settings close well-known paths to privilege escalation and information "
        "leaks (kernel pointers, the kernel log, unprivileged BPF, core dumps of set-id programs, "
        "link races, ICMP redirects).",
        remediation="Set the value shown and persist it in /etc/sysctl.d.",
        params=(
            ParamSpec(
                "expected",
                "strings",
                "Expected values of kernel settings.",
                (
                    "kernel.kptr_restrict>=1",
                    "kernel.dmesg_restrict=1",
                    "kernel.unprivileged_bpf_disabled>=1",
                    "fs.protected_symlinks=1",
                    "fs.protected_hardlinks=1",
                    "fs.suid_dumpable=0",
                    "net.ipv4.conf.all.accept_redirects=0",
                    "net.ipv4.conf.all.accept_source_route=0",
                    "net.ipv4.tcp_syncookies=1",
                ),
                sysctl_expectation,
            ),
            _IGNORE_NODES,
        ),
        default_priority=c.PRIORITY_P4,
        blockable=False,
        event_kinds=_NONE,
        node_state=True,
    ),
)
