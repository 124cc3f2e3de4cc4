"""AlertService: list, get, watch and triage alerts stored in etcd."""

from __future__ import annotations

import base64
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import aetcd
import grpc

from telltale.controller.errors import InvalidArgument, NotFound, Unavailable
from telltale.controller.rpc import (
    actor,
    check_enum,
    check_enums,
    check_names,
    check_timestamp,
    paginate,
    require,
    store_unavailable,
    unary,
)
from telltale.controller.store import AlertChange, Conflict, Store, Versioned
from telltale.engine.alerts import alert_matches, expire_suppression
from telltale.v1 import alert_pb2, alert_pb2_grpc, common_pb2

_CURSOR_PREFIX = "fp:"
MAX_REASON_BYTES = 1024
MAX_HISTORY = 50


def _encode_cursor(fingerprint: str) -> str:
    return base64.urlsafe_b64encode((_CURSOR_PREFIX + fingerprint).encode()).decode()


def _decode_cursor(token: str) -> str:
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        text = ""
    if not text.startswith(_CURSOR_PREFIX):
        raise InvalidArgument("page.page_token", f"{token!r} is not a token this server issued")
    return text.removeprefix(_CURSOR_PREFIX)


def check_filter(f: alert_pb2.AlertFilter, field: str) -> None:
    """Raise InvalidArgument naming the first bad entry of an alert filter (`field` is its path)."""
    check_enums(f.priorities, common_pb2.Priority.DESCRIPTOR, f"{field}.priorities")
    check_enums(f.categories, common_pb2.Category.DESCRIPTOR, f"{field}.categories")
    check_enums(f.states, alert_pb2.AlertState.DESCRIPTOR, f"{field}.states")
    for name in ("alert_types", "applications", "components", "nodes"):
        check_names(getattr(f, name), f"{field}.{name}")
    if f.HasField("seen_after"):
        check_timestamp(f.seen_after, f"{field}.seen_after")
    if f.HasField("seen_before"):
        check_timestamp(f.seen_before, f"{field}.seen_before")
    both = f.HasField("seen_after") and f.HasField("seen_before")
    if both and f.seen_before.ToNanoseconds() <= f.seen_after.ToNanoseconds():
        raise InvalidArgument(f"{field}.seen_before", "must be later than seen_after")


class AlertService(alert_pb2_grpc.AlertServiceServicer):
    """Serves alerts; every replica reads the same records from the store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    @unary
    async def ListAlerts(
        self, request: alert_pb2.ListAlertsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> alert_pb2.ListAlertsResponse:
        check_filter(request.filter, "filter")
        # Pages follow the fingerprint, which never changes: an alert updated while a client pages
        # through the listing keeps its place, so none is skipped or listed twice.
        page_request = common_pb2.PageRequest(page_size=request.page.page_size)
        if request.page.page_token:
            page_request.page_token = _decode_cursor(request.page.page_token)
        stored, revision = await self._store.list_alerts()
        now_ns = time.time_ns()
        current = (as_of(v.value, now_ns) for v in stored)
        matching = (a for a in current if alert_matches(a, request.filter))
        page, after = paginate(matching, lambda a: a.fingerprint, page_request)
        response = alert_pb2.ListAlertsResponse(alerts=page, revision=revision)
        if after:
            response.page.next_page_token = _encode_cursor(after)
        return response

    @unary
    async def GetAlert(
        self, request: alert_pb2.GetAlertRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> alert_pb2.GetAlertResponse:
        fingerprint = require(request.fingerprint, "fingerprint")
        stored = await self._store.get_alert(fingerprint)
        if stored is None:
            raise NotFound(f"no alert with fingerprint {fingerprint!r}")
        return alert_pb2.GetAlertResponse(alert=as_of(stored.value, time.time_ns()))

    async def WatchAlerts(
        self, request: alert_pb2.WatchAlertsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[alert_pb2.WatchAlertsResponse]:
        try:
            if request.after_revision < 0:
                raise InvalidArgument("after_revision", "must not be negative")
            check_filter(request.filter, "filter")
        except InvalidArgument as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            async for change in self._changes(request, context):
                yield change
        except aetcd.RevisionCompactedError as exc:
            await context.abort(
                grpc.StatusCode.OUT_OF_RANGE,
                f"after_revision {request.after_revision} is older than the retained history "
                f"(compacted at {exc.compacted_revision}): list the alerts again, or watch with "
                "send_existing, and resume from the revision that returns",
            )
        except aetcd.ClientError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, store_unavailable(exc))

    async def _changes(
        self, request: alert_pb2.WatchAlertsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[alert_pb2.WatchAlertsResponse]:
        start = request.after_revision
        sent = False
        if request.send_existing or start == 0:
            stored, revision = await self._store.list_alerts()
            if request.send_existing:
                now_ns = time.time_ns()
                existing = sorted(
                    (
                        Versioned(as_of(v.value, now_ns), v.mod_revision)
                        for v in stored
                        if v.mod_revision > start and alert_matches(as_of(v.value, now_ns), request.filter)
                    ),
                    key=lambda v: v.mod_revision,
                )
                for rev, items in itertools.groupby(existing, key=lambda v: v.mod_revision):
                    sent = True
                    yield alert_pb2.WatchAlertsResponse(
                        revision=rev,
                        changes=[
                            alert_pb2.AlertChange(kind=alert_pb2.ALERT_CHANGE_KIND_CREATED, alert=v.value)
                            for v in items
                        ],
                    )
            start = max(start, revision)
        if not sent:
            # Every change after `start` will be replayed by the watch, so the client may rely on
            # it from here: say so by answering the call's initial metadata.
            await context.send_initial_metadata(())
        async for group in self._store.watch_alerts(start):
            changes = [c for c in map(_change_message, group) if c is not None]
            now_ns = time.time_ns()
            for c in changes:
                if c.kind != alert_pb2.ALERT_CHANGE_KIND_DELETED:
                    c.alert.CopyFrom(as_of(c.alert, now_ns))
            changes = [
                c
                for c in changes
                if c.kind == alert_pb2.ALERT_CHANGE_KIND_DELETED or alert_matches(c.alert, request.filter)
            ]
            if changes:
                yield alert_pb2.WatchAlertsResponse(revision=group[0].revision, changes=changes)

    @unary
    async def UpdateAlertState(
        self, request: alert_pb2.UpdateAlertStateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> alert_pb2.UpdateAlertStateResponse:
        fingerprint = require(request.fingerprint, "fingerprint")
        check_enum(request.state, alert_pb2.AlertState.DESCRIPTOR, "state")
        needs_reason = (alert_pb2.ALERT_STATE_NOT_AN_ISSUE, alert_pb2.ALERT_STATE_SUPPRESSED)
        if request.state in needs_reason and not request.reason.strip():
            raise InvalidArgument("reason", "is required for this state")
        if request.state == alert_pb2.ALERT_STATE_SUPPRESSED and not request.HasField("suppressed_until"):
            raise InvalidArgument("suppressed_until", "is required to suppress an alert")
        if request.HasField("suppressed_until"):
            check_timestamp(request.suppressed_until, "suppressed_until")
            suppressing = request.state == alert_pb2.ALERT_STATE_SUPPRESSED
            if suppressing and request.suppressed_until.ToNanoseconds() <= time.time_ns():
                raise InvalidArgument("suppressed_until", "is not in the future")
        if len(request.reason.encode()) > MAX_REASON_BYTES:
            raise InvalidArgument("reason", f"is longer than {MAX_REASON_BYTES} bytes")
        who = actor(context)
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
            change = alert.history.add(state=request.state, actor=who, reason=request.reason)
            change.time.GetCurrentTime()
            if len(alert.history) > MAX_HISTORY:  # keep an alert's record well inside etcd's limits
                del alert.history[: len(alert.history) - MAX_HISTORY]
            try:
                alert.revision = await self._store.put_alert(alert, stored.mod_revision)
            except Conflict:
                continue
            return alert_pb2.UpdateAlertStateResponse(alert=alert)
        raise Unavailable(f"alert {fingerprint}: too many concurrent updates, retry")


def as_of(alert: alert_pb2.Alert, now_ns: int) -> alert_pb2.Alert:
    """The alert as it stands at `now_ns`: a suppression whose time has passed reads as open.

    The stored record keeps the suppression until the alert is next written (an occurrence or a
    triage decision), which records the reopening in its history.
    """
    return expire_suppression(alert, now_ns=now_ns) or alert


def _change_message(change: AlertChange) -> alert_pb2.AlertChange | None:
    if change.alert is None:
        return alert_pb2.AlertChange(
            kind=alert_pb2.ALERT_CHANGE_KIND_DELETED, alert=alert_pb2.Alert(fingerprint=change.fingerprint)
        )
    kind = alert_pb2.ALERT_CHANGE_KIND_CREATED if change.created else alert_pb2.ALERT_CHANGE_KIND_UPDATED
    return alert_pb2.AlertChange(kind=kind, alert=change.alert)
