"""AlertService: list, get, watch and triage alerts stored in etcd."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import grpc

from telltale.controller.errors import InvalidArgument, NotFound, Unavailable
from telltale.controller.rpc import page_size, require, unary
from telltale.controller.store import Conflict, Store
from telltale.engine.alerts import alert_matches
from telltale.v1 import alert_pb2, alert_pb2_grpc


def _sort_key(alert: alert_pb2.Alert) -> tuple[int, str]:
    last = alert.last_seen
    return (-(last.seconds * 1_000_000_000 + last.nanos), alert.fingerprint)


def _encode_cursor(alert: alert_pb2.Alert) -> str:
    neg_ns, fingerprint = _sort_key(alert)
    return base64.urlsafe_b64encode(f"{neg_ns}:{fingerprint}".encode()).decode()


def _decode_cursor(token: str) -> tuple[int, str]:
    try:
        neg_ns, fingerprint = base64.urlsafe_b64decode(token.encode()).decode().split(":", 1)
        return int(neg_ns), fingerprint
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument("page.page_token", f"{token!r} is not a token this server issued") from exc


class AlertService(alert_pb2_grpc.AlertServiceServicer):
    """Serves alerts; every replica reads the same records from the store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    @unary
    async def ListAlerts(
        self, request: alert_pb2.ListAlertsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> alert_pb2.ListAlertsResponse:
        size = page_size(request.page.page_size)
        after = _decode_cursor(request.page.page_token) if request.page.page_token else None
        stored, revision = await self._store.list_alerts()
        matching = sorted((v.value for v in stored if alert_matches(v.value, request.filter)), key=_sort_key)
        if after is not None:
            matching = [a for a in matching if _sort_key(a) > after]
        page = matching[:size]
        response = alert_pb2.ListAlertsResponse(alerts=page, revision=revision)
        if len(matching) > size:
            response.page.next_page_token = _encode_cursor(page[-1])
        return response

    @unary
    async def GetAlert(
        self, request: alert_pb2.GetAlertRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> alert_pb2.GetAlertResponse:
        fingerprint = require(request.fingerprint, "fingerprint")
        stored = await self._store.get_alert(fingerprint)
        if stored is None:
            raise NotFound(f"no alert with fingerprint {fingerprint!r}")
        return alert_pb2.GetAlertResponse(alert=stored.value)

    async def WatchAlerts(
        self, request: alert_pb2.WatchAlertsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[alert_pb2.WatchAlertsResponse]:
        if request.after_revision < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "after_revision: must not be negative")
        start = request.after_revision
        if request.send_existing or start == 0:
            stored, revision = await self._store.list_alerts()
            if request.send_existing:
                for item in sorted(stored, key=lambda v: v.mod_revision):
                    if item.mod_revision > start and alert_matches(item.value, request.filter):
                        yield alert_pb2.WatchAlertsResponse(
                            kind=alert_pb2.ALERT_CHANGE_KIND_CREATED,
                            alert=item.value,
                            revision=item.mod_revision,
                        )
            start = max(start, revision)
        # Every change after `start` will be replayed by the watch, so the client may rely on it
        # from here: say so by answering the call's initial metadata.
        await context.send_initial_metadata(())
        async for change in self._store.watch_alerts(start):
            if change.alert is None:
                yield alert_pb2.WatchAlertsResponse(
                    kind=alert_pb2.ALERT_CHANGE_KIND_DELETED,
                    alert=alert_pb2.Alert(fingerprint=change.fingerprint),
                    revision=change.revision,
                )
            elif alert_matches(change.alert, request.filter):
                kind = (
                    alert_pb2.ALERT_CHANGE_KIND_CREATED
                    if change.created
                    else alert_pb2.ALERT_CHANGE_KIND_UPDATED
                )
                yield alert_pb2.WatchAlertsResponse(kind=kind, alert=change.alert, revision=change.revision)

    @unary
    async def UpdateAlertState(
        self, request: alert_pb2.UpdateAlertStateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> alert_pb2.UpdateAlertStateResponse:
        fingerprint = require(request.fingerprint, "fingerprint")
        if (
            request.state == alert_pb2.ALERT_STATE_UNSPECIFIED
            or request.state not in alert_pb2.AlertState.values()
        ):
            raise InvalidArgument("state", f"{request.state} is not a valid alert state")
        needs_reason = (alert_pb2.ALERT_STATE_NOT_AN_ISSUE, alert_pb2.ALERT_STATE_SUPPRESSED)
        if request.state in needs_reason and not request.reason.strip():
            raise InvalidArgument("reason", "is required for this state")
        if request.state == alert_pb2.ALERT_STATE_SUPPRESSED and not request.HasField("suppressed_until"):
            raise InvalidArgument("suppressed_until", "is required to suppress an alert")
        actor = _actor(context)
        for _ in range(8):
            stored = await self._store.get_alert(fingerprint)
            if stored is None:
                raise NotFound(f"no alert with fingerprint {fingerprint!r}")
            alert = stored.value
            alert.state = request.state
            if request.state == alert_pb2.ALERT_STATE_SUPPRESSED:
                alert.suppressed_until.CopyFrom(request.suppressed_until)
            else:
                alert.ClearField("suppressed_until")
            change = alert.history.add(state=request.state, actor=actor, reason=request.reason)
            change.time.GetCurrentTime()
            try:
                alert.revision = await self._store.put_alert(alert, stored.mod_revision)
            except Conflict:
                continue
            return alert_pb2.UpdateAlertStateResponse(alert=alert)
        raise Unavailable(f"alert {fingerprint}: too many concurrent updates, retry")


def _actor(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """Who is calling: the peer address until API tokens identify callers."""
    return str(context.peer() or "unknown")
