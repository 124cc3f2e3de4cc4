"""Keeps the node's firewall in line with the policies in force and the workloads run here.

The enforcer takes every policy update (see :mod:`telltale.nodeagent.blocks` for which policies'
blocks the node applies), applies the result through a :class:`~telltale.nodeagent.enforce.Firewall`
in a worker thread, and remembers what it applied — the networks, and the workloads whose
policies they come from — in ``<state_dir>/enforcement.json``. At start it applies that file
again, so that the firewall is reconciled at once — after a reboot, or after someone changed the
table — without waiting for a controller, and the next policy update still counts the workloads
that were running before the restart. A failed apply is retried (:meth:`Enforcer.retry_failed`).
The state it reports (:attr:`Enforcer.state`) travels in heartbeats to the controller's inventory.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

import trio

from telltale.nodeagent.blocks import NodeBlocks, SeenWorkloads, node_blocks
from telltale.nodeagent.enforce import EnforcementError, Firewall
from telltale.v1 import agent_pb2, common_pb2

log = logging.getLogger(__name__)

SAVED_FILE = "enforcement.json"


class Enforcer:
    """The firewall's content, from policy updates and workloads; one per agent.

    With ``firewall`` None, enforcement is off (``mode`` says whether by configuration or because
    it cannot work, and ``reason`` why): updates are still followed, nothing is applied.
    """

    def __init__(
        self,
        firewall: Firewall | None,
        state_dir: Path,
        *,
        mode: common_pb2.EnforcementMode.ValueType,
        reason: str,
    ) -> None:
        self._firewall = firewall
        self._saved = state_dir / SAVED_FILE
        self._update: agent_pb2.PolicyUpdate | None = None
        self._applied: tuple[str, ...] | None = None
        self._lock = trio.Lock()
        self.seen = SeenWorkloads()
        self.state = common_pb2.EnforcementState(mode=mode, detail=reason)

    @property
    def active(self) -> bool:
        """True when a firewall is managed."""
        return self._firewall is not None

    async def reconcile_saved(self) -> None:
        """Apply the networks saved by the last successful apply, if any (at agent start)."""
        if self._firewall is None:
            return
        try:
            saved = json.loads(self._saved.read_text(encoding="utf-8"))
            networks = tuple(str(n) for n in saved["networks"])
            revision = int(saved["revision"])
            seen = [(str(a), str(c), str(o)) for a, c, o in saved.get("workloads", [])]
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring %s: %s", self._saved, exc)
            return
        for key in seen:
            self.seen.keys[key] = None
        await self._apply(NodeBlocks(networks), revision)

    async def retry_failed(self) -> None:
        """Apply the latest update again if the last apply failed (the controller resends only on
        a new revision)."""
        if self.state.mode == common_pb2.ENFORCEMENT_MODE_FAILED:
            await self._refresh(force=True)

    async def on_update(self, update: agent_pb2.PolicyUpdate) -> str:
        """Apply what ``update`` blocks on this node; returns "" or why it could not be applied."""
        self._update = update
        return await self._refresh(force=True)

    async def on_workloads(self, workloads: Iterable[common_pb2.Workload]) -> None:
        """Take workloads into account; re-applies only when one brings a policy not seen before."""
        if self.seen.add_all(workloads) and self._update is not None:
            await self._refresh(force=False)

    async def _refresh(self, *, force: bool) -> str:
        update = self._update
        if update is None:
            return ""
        blocks = node_blocks(update, self.seen.keys)
        if not force and blocks.networks == self._applied:
            return ""
        return await self._apply(blocks, update.revision)

    async def _apply(self, blocks: NodeBlocks, revision: int) -> str:
        firewall = self._firewall
        if firewall is None:
            return ""
        async with self._lock:
            try:
                result = await trio.to_thread.run_sync(firewall.apply, blocks.networks)
            except Exception as exc:  # whatever the firewall raises, the agent keeps running
                self.state = common_pb2.EnforcementState(
                    mode=common_pb2.ENFORCEMENT_MODE_FAILED,
                    blocked_networks=self.state.blocked_networks,
                    policy_revision=self.state.policy_revision,
                    detail=str(exc),
                )
                if isinstance(exc, EnforcementError):
                    log.error("enforcement of policy revision %d failed: %s", revision, exc)
                else:
                    log.exception("enforcement of policy revision %d failed", revision)
                return str(exc) or type(exc).__name__
            self._applied = blocks.networks
            notes = [*blocks.unenforced]
            if result.excluded or result.invalid or result.truncated:
                notes.insert(0, result.summary())
            self.state = common_pb2.EnforcementState(
                mode=common_pb2.ENFORCEMENT_MODE_ACTIVE,
                blocked_networks=len(result.networks),
                policy_revision=revision,
                detail="; ".join(notes)[:1024],
            )
            log.warning("enforcing policy revision %d: %s", revision, result.summary())
            for note in blocks.unenforced:
                log.warning("not enforced: %s", note)
            self._save(blocks.networks, revision)
            return ""

    def _save(self, networks: tuple[str, ...], revision: int) -> None:
        """Write the file whole or not at all (temp file, fsync, rename)."""
        tmp = self._saved.with_suffix(".tmp")
        content = {
            "revision": revision,
            "networks": list(networks),
            "workloads": [list(k) for k in self.seen.keys],
        }
        try:
            self._saved.parent.mkdir(parents=True, exist_ok=True)
            with tmp.open("w", encoding="utf-8") as out:
                json.dump(content, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self._saved)
        except OSError as exc:
            log.warning(
                "could not save %s (the firewall is reconciled at the next update): %s", self._saved, exc
            )
