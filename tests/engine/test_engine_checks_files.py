"""File alert types: what fires each, what does not, its parameters and its exceptions."""

from __future__ import annotations

import pytest
from casetable import Case, fires, quiet, uncovered
from eventkit import NOW, SHOP_API, K, changed, compiled, fired, opened

from telltale.v1 import common_pb2

CREDENTIALS = "file.credential_store"
SYSTEM = "file.system_config_write"
KEYS = "file.key_material"
MEMORY = "file.process_memory"
LOGS = "file.log_tampering"
MODES = "file.permissions_weakened"

CHMOD, RENAME, UNLINK = K.FILE_CHANGE_KIND_CHMOD, K.FILE_CHANGE_KIND_RENAME, K.FILE_CHANGE_KIND_UNLINK
O_WRONLY_TRUNC = 0o1001

CASES = [
    fires("shadow", CREDENTIALS, opened("/etc/shadow"), "/etc/shadow"),
    fires("dotted shadow", CREDENTIALS, opened("/etc/./shadow"), "/etc/shadow"),
    fires("ssh key", CREDENTIALS, opened("/home/ann/.ssh/id_ed25519"), "/home/ann/.ssh/id_ed25519"),
    fires("aws", CREDENTIALS, opened("/srv/app/.aws/credentials"), "/srv/app/.aws/credentials"),
    fires("kube", CREDENTIALS, opened("/root/.kube/config"), "/root/.kube/config"),
    quiet("passwd", CREDENTIALS, opened("/etc/passwd")),
    quiet("denied", CREDENTIALS, opened("/etc/shadow", errno=13)),
    quiet("not listed", CREDENTIALS, opened("/etc/shadow"), params="{paths: [/etc/sudoers]}"),
    fires("write etc", SYSTEM, opened("/etc/crontab", write=True), "/etc/crontab"),
    fires("preload list", SYSTEM, opened("/etc/ld.so.preload", write=True), "/etc/ld.so.preload"),
    fires(
        "unit", SYSTEM, opened("/lib/systemd/system/x.service", write=True), "/lib/systemd/system/x.service"
    ),
    fires("chmod", SYSTEM, changed(CHMOD, "/etc/sudoers", mode=0o666), "/etc/sudoers"),
    fires("unlink", SYSTEM, changed(UNLINK, "/etc/hosts"), "/etc/hosts"),
    fires("rename into", SYSTEM, changed(RENAME, "/tmp/p", new_path="/etc/passwd"), "/etc/passwd"),
    quiet("read etc", SYSTEM, opened("/etc/hosts")),
    quiet("write elsewhere", SYSTEM, opened("/srv/app/state", write=True)),
    quiet("unlink elsewhere", SYSTEM, changed(UNLINK, "/tmp/x")),
    quiet("failed", SYSTEM, opened("/etc/crontab", write=True, errno=13)),
    quiet("other paths", SYSTEM, opened("/etc/crontab", write=True), params="{paths: [/boot/*]}"),
    fires("pem", KEYS, opened("/srv/app/tls/server.pem"), "/srv/app/tls/server.pem"),
    fires("id_rsa", KEYS, opened("/home/ann/.ssh/id_rsa"), "/home/ann/.ssh/id_rsa"),
    fires("host key", KEYS, opened("/etc/ssh/ssh_host_ed25519_key"), "/etc/ssh/ssh_host_ed25519_key"),
    quiet("ca bundle", KEYS, opened("/etc/ssl/certs/ISRG_Root_X1.pem")),
    quiet("certifi", KEYS, opened("/srv/venv/lib/python3.11/site-packages/certifi/cacert.pem")),
    quiet("crt", KEYS, opened("/srv/app/tls/server.crt")),
    fires("no ignore", KEYS, opened("/etc/ssl/certs/a.pem"), "/etc/ssl/certs/a.pem", params="{ignore: []}"),
    fires("proc mem", MEMORY, opened("/proc/1/mem"), "/proc/1/mem"),
    fires("dev mem", MEMORY, opened("/dev/mem"), "/dev/mem"),
    quiet("proc maps", MEMORY, opened("/proc/1/maps")),
    quiet("failed", MEMORY, opened("/proc/1/mem", errno=13)),
    fires("remove wtmp", LOGS, changed(UNLINK, "/var/log/wtmp"), "/var/log/wtmp"),
    fires("rename auth", LOGS, changed(RENAME, "/var/log/auth.log", new_path="/tmp/a"), "/var/log/auth.log"),
    fires(
        "truncate history",
        LOGS,
        opened("/root/.bash_history", write=True, flags=O_WRONLY_TRUNC),
        "/root/.bash_history",
    ),
    quiet("append", LOGS, opened("/var/log/syslog", write=True, flags=0o2001)),
    quiet("app log", LOGS, changed(UNLINK, "/var/log/shop/app.log.3")),
    quiet("chmod", LOGS, changed(CHMOD, "/var/log/wtmp", mode=0o600)),
    fires("setuid", MODES, changed(CHMOD, "/srv/app/tool", mode=0o4755), "/srv/app/tool"),
    fires(
        "world writable", MODES, changed(CHMOD, "/srv/app/config.yaml", mode=0o666), "/srv/app/config.yaml"
    ),
    quiet("ordinary", MODES, changed(CHMOD, "/srv/app/tool", mode=0o755)),
    quiet("unlink", MODES, changed(UNLINK, "/srv/app/tool")),
    quiet("setid off", MODES, changed(CHMOD, "/srv/app/tool", mode=0o4755), params="{setid: false}"),
    quiet("ignored", MODES, changed(CHMOD, "/tmp/sock", mode=0o777), params="{ignore: [/tmp/*]}"),
]


@pytest.mark.parametrize("case", CASES)
def test_file_case(case: Case) -> None:
    """Each file case fires with exactly its expected subjects, or stays quiet."""
    assert case.run() == list(case.expected)


def test_every_file_type_has_a_firing_and_a_quiet_case() -> None:
    """The table covers every file alert type both ways."""
    assert uncovered(CASES, common_pb2.CATEGORY_FILE) == []


def test_credential_store_exception_by_path_glob() -> None:
    """An exception on a path glob silences those files only."""
    policy = compiled(
        f"""
        {CREDENTIALS}:
          exceptions:
            - {{path: "*/.aws/credentials", reason: the SDK reads its own profile}}
        """
    )
    assert fired(policy, opened("/srv/app/.aws/credentials")) == []
    assert fired(policy, opened("/etc/shadow")) == ["/etc/shadow"]


def test_system_config_write_summary() -> None:
    """The summary says what was done to which file."""
    (finding,) = compiled(f"{SYSTEM}: {{}}\n").evaluate(changed(UNLINK, "/etc/hosts"), SHOP_API, NOW)
    assert finding.summary == "shop/api removed system file /etc/hosts"
    assert finding.category == common_pb2.CATEGORY_FILE


def test_permissions_weakened_summary_shows_the_mode() -> None:
    """The summary names the weakness and the mode."""
    (finding,) = compiled(f"{MODES}: {{}}\n").evaluate(changed(CHMOD, "/srv/x", mode=0o104755), SHOP_API, NOW)
    assert finding.summary == "shop/api made /srv/x set-id (mode 4755)"
