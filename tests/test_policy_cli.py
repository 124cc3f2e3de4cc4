"""The policy commands of the CLI, against a real controller: GitOps and day-to-day management."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import behave

from telltale.devcluster import LocalCluster, wait_for

pytestmark = pytest.mark.e2e

PAYMENTS = """\
apiVersion: telltale.dev/v1
kind: AlertPolicy
metadata:
  name: Payments
  description: payments
spec:
  rules:
    process.shell_launched:
      priority: P1
"""

BATCH = """\
apiVersion: telltale.dev/v1
kind: AlertPolicy
metadata:
  name: Batch Jobs
spec:
  rules:
    network.listen_all_interfaces: {}
"""


def ok(cluster: LocalCluster, *args: str) -> str:
    out = cluster.cli(*args)
    assert out.returncode == 0, f"telltale {' '.join(args)}: {out.stderr}"
    return out.stdout


def test_apply_a_directory_is_idempotent_and_dry_run_changes_nothing(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """A directory is the desired state: dry-run shows the plan, apply converges, again is a no-op."""
    docs = tmp_path / "policies"
    docs.mkdir()
    (docs / "payments.yaml").write_text(PAYMENTS)
    (docs / "batch.yml").write_text(BATCH)
    (docs / "README.md").write_text("not a policy")

    plan = ok(cluster, "policy", "apply", "-f", str(docs), "--dry-run")
    assert "policy 'Payments' would be created" in plan
    assert "policy 'Batch Jobs' would be created" in plan
    assert "Payments" not in ok(cluster, "policy", "list")

    first = ok(cluster, "policy", "apply", "-f", str(docs))
    assert "policy 'Payments' created (revision 1)" in first
    assert "policy 'Batch Jobs' created (revision 1)" in first
    again = ok(cluster, "policy", "apply", "-f", str(docs))
    assert "policy 'Payments' unchanged (revision 1)" in again
    assert "policy 'Batch Jobs' unchanged (revision 1)" in again

    (docs / "payments.yaml").write_text(PAYMENTS.replace("priority: P1", "priority: P2"))
    diff = cluster.cli("policy", "diff", "-f", str(docs / "payments.yaml"))
    assert diff.returncode == 1
    assert "-      priority: P1" in diff.stdout
    assert "+      priority: P2" in diff.stdout
    assert "policy 'Payments' would be updated (revision 1 -> 2)" in ok(
        cluster, "policy", "apply", "-f", str(docs), "--dry-run"
    )
    assert "policy 'Payments' updated (revision 1 -> 2)" in ok(cluster, "policy", "apply", "-f", str(docs))
    assert cluster.cli("policy", "diff", "-f", str(docs)).returncode == 0

    revisions = cluster.cli("policy", "diff", "Payments")
    assert revisions.returncode == 1
    assert "+++ Payments@2" in revisions.stdout
    assert "+      priority: P2" in revisions.stdout


def test_one_invalid_document_stops_the_whole_apply(cluster: LocalCluster, tmp_path: Path) -> None:
    """Every problem of every file is listed, and no file of the directory is applied."""
    docs = tmp_path / "policies"
    docs.mkdir()
    (docs / "a-good.yaml").write_text(PAYMENTS.replace("Payments", "Good One"))
    (docs / "b-bad.yaml").write_text(BATCH.replace("network.listen_all_interfaces", "network.nope"))
    out = cluster.cli("policy", "apply", "-f", str(docs))
    assert out.returncode == 1
    assert "nothing was changed" in out.stderr
    assert f"{docs / 'b-bad.yaml'}: spec.rules.network.nope" in out.stderr
    assert "Good One" not in ok(cluster, "policy", "list")


def test_applying_over_a_built_in_is_refused(cluster: LocalCluster, tmp_path: Path) -> None:
    """Built-ins are read-only: a document named Standard is refused with the way out."""
    doc = tmp_path / "standard.yaml"
    doc.write_text(PAYMENTS.replace("name: Payments", "name: Standard"))
    out = cluster.cli("policy", "apply", "-f", str(doc))
    assert out.returncode == 1
    assert "built-in policy and read-only" in out.stderr


def test_export_round_trips_through_apply(cluster: LocalCluster, tmp_path: Path) -> None:
    """Exported documents applied again change nothing; -d writes one file per policy."""
    doc = tmp_path / "export-me.yaml"
    doc.write_text(PAYMENTS.replace("Payments", "Export Me"))
    ok(cluster, "policy", "apply", "-f", str(doc))
    out_dir = tmp_path / "exported"
    written = ok(cluster, "policy", "export", "Export Me", "-d", str(out_dir))
    assert "export-me.yaml" in written
    assert "unchanged" in ok(cluster, "policy", "apply", "-f", str(out_dir / "export-me.yaml"))
    printed = ok(cluster, "policy", "export", "--all")
    assert "name: Standard" in printed
    assert "name: Export Me" in printed


def test_clone_assign_usage_history_and_delete(cluster: LocalCluster, tmp_path: Path) -> None:
    """The day-to-day cycle: clone a built-in, assign it, see who uses it, and delete it only when free."""
    assert "created from 'Standard'" in ok(cluster, "policy", "clone", "Standard", "Team A")
    assert "shop/api now uses policy 'Team A'" in ok(
        cluster, "policy", "assign", "Team A", "--app", "shop", "--component", "api"
    )
    usage = ok(cluster, "policy", "usage", "Team A")
    assert "shop" in usage
    assert "api" in usage
    refused = cluster.cli("policy", "delete", "Team A")
    assert refused.returncode == 1
    assert "FAILED_PRECONDITION" in refused.stderr
    assert "assignment removed" in ok(cluster, "policy", "unassign", "--app", "shop", "--component", "api")
    history = ok(cluster, "policy", "history", "Team A")
    assert history.splitlines()[1].split()[0] == "1"
    assert "deleted" in ok(cluster, "policy", "delete", "Team A")
    assert "Team A" not in ok(cluster, "policy", "list")
    assert "'Standard' is the default policy" in ok(cluster, "policy", "usage", "Standard")


def test_catalog_show_explains_an_alert_type(cluster: LocalCluster) -> None:
    """catalog show prints what triggers a type, why it matters, how to fix it, and its parameters."""
    out = ok(cluster, "catalog", "show", "network.blocklisted_destination")
    for heading in ("What triggers it:", "Why it matters:", "How to fix it:", "Parameters:"):
        assert heading in out
    assert "networks" in out
    missing = cluster.cli("catalog", "show", "no.such.type")
    assert missing.returncode == 1
    assert "NOT_FOUND" in missing.stderr


def test_policy_test_shows_what_a_candidate_would_remove_and_changes_nothing(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """A candidate Standard without shell alerts would remove the shell alert a workload just raised."""
    run = cluster.run_workload("dry-run-app", behave("--shell"))
    assert run.returncode == 0, run.stderr
    wait_for(
        lambda: "process.shell_launched" in ok(cluster, "alerts", "list", "--app", "dry-run-app"),
        30,
        "the shell alert of dry-run-app",
    )
    before = ok(cluster, "alerts", "list", "--app", "dry-run-app")
    standard = ok(cluster, "policy", "export", "Standard")
    enabled = "process.shell_launched:\n      enabled: true"
    assert enabled in standard
    doc = tmp_path / "candidate.yaml"
    doc.write_text(standard.replace(enabled, "process.shell_launched:\n      enabled: false", 1))

    out = ok(cluster, "policy", "test", "-f", str(doc), "--since", "1h", "--app", "dry-run-app")
    added, _, removed = out.partition("would remove:")
    assert "would add:\n  nothing" in added
    row = next(line for line in removed.splitlines() if "process.shell_launched" in line)
    assert row.split()[:4] == ["P2", "process.shell_launched", "dry-run-app", "/bin/sh"]
    assert "nothing was changed" in out
    assert ok(cluster, "alerts", "list", "--app", "dry-run-app") == before
    assert ok(cluster, "policy", "show", "Standard").startswith("# revision 1, built-in")

    bad = cluster.cli("policy", "test", "-f", str(doc), "--since", "1x")
    assert bad.returncode == 2
    assert "'1x' is not a duration" in bad.stderr
