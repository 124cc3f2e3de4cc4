"""Catalog entries of the file category: sensitive files read, system files changed."""

from __future__ import annotations

from telltale.engine.alerttype import AlertTypeSpec
from telltale.engine.params import ParamSpec, glob
from telltale.v1 import common_pb2 as c

_OPEN = frozenset({c.EVENT_KIND_FILE_OPEN})
_CHANGE = frozenset({c.EVENT_KIND_FILE_CHANGE})
_PATH = frozenset({"path"})

SPECS: tuple[AlertTypeSpec, ...] = (
    AlertTypeSpec(
        id="file.credential_store",
        category=c.CATEGORY_FILE,
        title="Credential store accessed",
        description="A workload opened a file that stores credentials: password and group shadow "
        "files, sudo rules, SSH directories, cloud, container registry and Kubernetes "
        "credentials, .netrc and similar. Paths are matched against the configured patterns; "
        "opens that failed are ignored.",
        rationale="These files hold what an intruder needs to move on to other accounts and "
        "systems; reading them is a standard step after gaining a foothold.",
        remediation="Find why the workload reads the file. Give services their own narrowly scoped "
        "credentials (a secret store, a mounted file under the service's directory) and except "
        "that path with its reason.",
        params=(
            ParamSpec(
                "paths",
                "strings",
                "Patterns of credential files ('*' also matches '/').",
                (
                    "/etc/shadow",
                    "/etc/shadow-",
                    "/etc/gshadow",
                    "/etc/gshadow-",
                    "/etc/security/opasswd",
                    "/etc/sudoers",
                    "/etc/sudoers.d/*",
                    "/root/.ssh/*",
                    "/home/*/.ssh/*",
                    "*/.aws/credentials",
                    "*/.config/gcloud/*",
                    "*/.azure/*",
                    "*/.kube/config",
                    "*/.docker/config.json",
                    "*/.netrc",
                    "*/.pgpass",
                    "*/.git-credentials",
                    "*/.vault-token",
                    "/var/run/secrets/kubernetes.io/serviceaccount/token",
                ),
                glob,
            ),
        ),
        default_priority=c.PRIORITY_P2,
        blockable=False,
        event_kinds=_OPEN,
        exception_scopes=_PATH,
    ),
    AlertTypeSpec(
        id="file.system_config_write",
        category=c.CATEGORY_FILE,
        title="System configuration changed",
        description="A workload opened a system configuration file for writing, or changed the "
        "mode of, renamed or removed one: any path matching the configured patterns (/etc, /boot, "
        "systemd units). Calls that failed are ignored.",
        rationale="Changing system configuration (users, sudo rules, services, the loader's "
        "preload list, cron) is how intruders persist and escalate; applications should not "
        "touch it at run time.",
        remediation="Move the application's own configuration out of /etc or make it read-only; "
        "manage system configuration through the configuration management tool.",
        params=(
            ParamSpec(
                "paths",
                "strings",
                "Patterns of system configuration files ('*' also matches '/').",
                ("/etc/*", "/boot/*", "/usr/lib/systemd/*", "/lib/systemd/*"),
                glob,
            ),
        ),
        default_priority=c.PRIORITY_P2,
        blockable=False,
        event_kinds=frozenset({*_OPEN, *_CHANGE}),
        exception_scopes=_PATH,
    ),
    AlertTypeSpec(
        id="file.key_material",
        category=c.CATEGORY_FILE,
        title="Private key material opened",
        description="A workload opened a file that looks like key material: PEM and key files, "
        "SSH private keys, PKCS#12 and Java key stores. Certificate bundles in the ignored "
        "locations are not reported; opens that failed are ignored.",
        rationale="Stolen private keys let an attacker impersonate the service or decrypt its "
        "traffic long after the intrusion is cleaned up.",
        remediation="Keep keys readable only by the process that serves with them, preferably in a "
        "key store or HSM; except the service's own key path with its reason.",
        params=(
            ParamSpec(
                "paths",
                "strings",
                "Patterns of key files ('*' also matches '/').",
                (
                    "*.pem",
                    "*.key",
                    "*/id_rsa",
                    "*/id_dsa",
                    "*/id_ecdsa",
                    "*/id_ed25519",
                    "*.p12",
                    "*.pfx",
                    "*.jks",
                    "*.keystore",
                    "/etc/ssh/ssh_host_*_key",
                ),
                glob,
            ),
            ParamSpec(
                "ignore",
                "strings",
                "Patterns of paths that are never reported (public certificate bundles).",
                (
                    "/etc/ssl/certs/*",
                    "/etc/pki/tls/certs/*",
                    "/etc/pki/ca-trust/*",
                    "/etc/ca-certificates/*",
                    "/usr/share/ca-certificates/*",
                    "/usr/local/share/ca-certificates/*",
                    "*/certifi/cacert.pem",
                ),
                glob,
            ),
        ),
        default_priority=c.PRIORITY_P3,
        blockable=False,
        event_kinds=_OPEN,
        exception_scopes=_PATH,
    ),
    AlertTypeSpec(
        id="file.process_memory",
        category=c.CATEGORY_FILE,
        title="Process or kernel memory opened",
        description="A workload opened another process's memory (/proc/PID/mem) or physical or "
        "kernel memory (/dev/mem, /dev/kmem, /dev/port). Opens that failed are ignored.",
        rationale="Reading process memory extracts passwords and keys (credential dumping); "
        "writing it injects code. Services have no business doing either.",
        remediation="Investigate the process; except debuggers or runtimes that inspect their own "
        "memory by binary.",
        params=(
            ParamSpec(
                "paths",
                "strings",
                "Patterns of memory files ('*' also matches '/').",
                ("/proc/*/mem", "/dev/mem", "/dev/kmem", "/dev/port"),
                glob,
            ),
        ),
        default_priority=c.PRIORITY_P2,
        blockable=False,
        event_kinds=_OPEN,
        exception_scopes=_PATH,
    ),
    AlertTypeSpec(
        id="file.log_tampering",
        category=c.CATEGORY_FILE,
        title="System logs tampered with",
        description="A workload removed or renamed a system log or shell history, or opened one "
        "with truncation. Calls that failed are ignored.",
        rationale="Intruders erase login records, audit logs and shell histories to hide what they did.",
        remediation="Investigate; system logs are rotated by the system's own tools, never by "
        "applications. Ship logs off the host so that local tampering cannot erase them.",
        params=(
            ParamSpec(
                "paths",
                "strings",
                "Patterns of protected logs ('*' also matches '/').",
                (
                    "/var/log/wtmp",
                    "/var/log/btmp",
                    "/var/log/lastlog",
                    "/var/log/auth.log*",
                    "/var/log/secure*",
                    "/var/log/syslog*",
                    "/var/log/messages*",
                    "/var/log/audit/*",
                    "/var/log/journal/*",
                    "*/.bash_history",
                    "*/.zsh_history",
                ),
                glob,
            ),
        ),
        default_priority=c.PRIORITY_P2,
        blockable=False,
        event_kinds=frozenset({*_OPEN, *_CHANGE}),
        exception_scopes=_PATH,
    ),
    AlertTypeSpec(
        id="file.permissions_weakened",
        category=c.CATEGORY_FILE,
        title="File permissions weakened",
        description="A workload changed a file's mode to set-user-id or set-group-id, or to "
        "writable by everyone. Which of these count is configurable; calls that failed are "
        "ignored.",
        rationale="A set-id file is a ready-made privilege escalation; a world-writable one lets "
        "any local user replace code or configuration.",
        remediation="Create files with the least permissive mode the application needs (umask 027 "
        "or stricter) and never set the set-id bits at run time.",
        params=(
            ParamSpec("setid", "bool", "Report set-user-id and set-group-id modes.", True),
            ParamSpec("world_writable", "bool", "Report modes that let everyone write.", True),
            ParamSpec(
                "ignore",
                "strings",
                "Patterns of paths that are never reported ('*' also matches '/').",
                (),
                glob,
            ),
        ),
        default_priority=c.PRIORITY_P2,
        blockable=False,
        event_kinds=_CHANGE,
        exception_scopes=_PATH,
    ),
)
