"""`telltale alerts …`: list and watch alerts."""

from __future__ import annotations

import argparse
import time

from telltale.cli.client import CliError, add_api_options, api_channel, every_page
from telltale.cli.format import ALERT_HEADERS, alert_row, clean, priority, table, to_json, when
from telltale.cli.format import state as format_state
from telltale.v1 import alert_pb2, alert_pb2_grpc, common_pb2

_STATES = {
    s: getattr(alert_pb2, f"ALERT_STATE_{s.upper().replace('-', '_')}")
    for s in ("open", "acknowledged", "not-an-issue", "suppressed")
}
_CHANGE = {
    alert_pb2.ALERT_CHANGE_KIND_CREATED: "new",
    alert_pb2.ALERT_CHANGE_KIND_UPDATED: "updated",
    alert_pb2.ALERT_CHANGE_KIND_DELETED: "deleted",
}


def add_filter_arguments(parser: argparse.ArgumentParser) -> None:
    """The alert filter flags shared by list and watch."""
    parser.add_argument(
        "--priority",
        action="append",
        choices=["P1", "P2", "P3", "P4"],
        default=[],
        help="only this priority (repeatable)",
    )
    parser.add_argument("--app", action="append", default=[], help="only this application (repeatable)")
    parser.add_argument(
        "--type", action="append", default=[], dest="types", help="only this alert type id (repeatable)"
    )
    parser.add_argument(
        "--state",
        action="append",
        choices=sorted(_STATES),
        default=[],
        help="only alerts in this state (repeatable)",
    )
    parser.add_argument("-o", "--output", choices=["table", "json"], default="table", help="output format")


def _filter(args: argparse.Namespace) -> alert_pb2.AlertFilter:
    return alert_pb2.AlertFilter(
        priorities=[getattr(common_pb2, f"PRIORITY_{p}") for p in args.priority],
        applications=args.app,
        alert_types=args.types,
        states=[_STATES[s] for s in args.state],
    )


def list_alerts(args: argparse.Namespace) -> int:
    """Print every matching alert (following pages), most recently seen first."""
    with api_channel(args.controller, plaintext=args.plaintext) as channel:
        stub = alert_pb2_grpc.AlertServiceStub(channel)
        pages = every_page(
            stub.ListAlerts, alert_pb2.ListAlertsRequest(filter=_filter(args)), timeout=args.timeout
        )
    alerts = [alert for page in pages for alert in page.alerts]
    alerts.sort(key=lambda a: (-a.last_seen.ToNanoseconds(), a.priority, a.fingerprint))
    if args.output == "json":
        for alert in alerts:
            print(to_json(alert))
    elif alerts:
        print(table(ALERT_HEADERS, [alert_row(a) for a in alerts]))
    else:
        print("no alerts")
    return 0


def watch_alerts(args: argparse.Namespace) -> int:
    """Print alert changes as they happen until interrupted (or --count changes)."""
    seen = 0
    with api_channel(args.controller, plaintext=args.plaintext) as channel:
        stub = alert_pb2_grpc.AlertServiceStub(channel)
        request = alert_pb2.WatchAlertsRequest(
            filter=_filter(args), send_existing=args.existing, after_revision=args.after
        )
        stream = stub.WatchAlerts(request)
        try:
            for response in stream:
                for change in response.changes:
                    if args.output == "json":
                        print(to_json(change, revision=response.revision), flush=True)
                    else:
                        a = change.alert
                        print(
                            f"{_CHANGE.get(change.kind, '?'):8} {priority(a.priority)} {a.alert_type:34} "
                            f"{clean(a.summary or a.fingerprint)} (x{a.occurrences})  @{response.revision}",
                            flush=True,
                        )
                    seen += 1
                    if args.count and seen >= args.count:
                        return 0
        except KeyboardInterrupt:
            pass
        finally:
            stream.cancel()  # type: ignore[no-untyped-call]
    return 0


def _duration(text: str) -> int:
    """Seconds in '90s', '15m', '8h', '2d', '1w'; raises CliError naming the value."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    number, unit = text[:-1], text[-1:]
    if unit not in units or not number.isdigit() or int(number) == 0:
        raise CliError(f"--for {text!r}: use a number and a unit (s, m, h, d, w), e.g. 8h", code=2)
    return int(number) * units[unit]


def change_state(args: argparse.Namespace) -> int:
    """Acknowledge, dismiss (not an issue), suppress for a while, or reopen an alert."""
    state = {
        "ack": alert_pb2.ALERT_STATE_ACKNOWLEDGED,
        "dismiss": alert_pb2.ALERT_STATE_NOT_AN_ISSUE,
        "suppress": alert_pb2.ALERT_STATE_SUPPRESSED,
        "reopen": alert_pb2.ALERT_STATE_OPEN,
    }[args.alerts_command]
    request = alert_pb2.UpdateAlertStateRequest(fingerprint=args.fingerprint, state=state, reason=args.reason)
    if state == alert_pb2.ALERT_STATE_SUPPRESSED:
        request.suppressed_until.FromSeconds(int(time.time()) + _duration(args.duration))
    with api_channel(args.controller, plaintext=args.plaintext) as channel:
        alert = alert_pb2_grpc.AlertServiceStub(channel).UpdateAlertState(request, timeout=args.timeout).alert
    until = f" until {when(alert.suppressed_until)}" if state == alert_pb2.ALERT_STATE_SUPPRESSED else ""
    label = f"{alert.fingerprint} ({alert.alert_type}, {clean(alert.summary)})"
    print(f"{label}: {format_state(alert.state)}{until}")
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `telltale alerts …`."""
    p = sub.add_parser("alerts", help="list and watch alerts")
    actions = p.add_subparsers(dest="alerts_command", metavar="ACTION", required=True)
    q = actions.add_parser("list", help="list alerts, most recently seen first")
    add_filter_arguments(q)
    add_api_options(q)
    q.set_defaults(func=list_alerts)
    q = actions.add_parser("watch", help="print alert changes as they happen")
    add_filter_arguments(q)
    q.add_argument("--existing", action="store_true", help="first print every current alert")
    q.add_argument("--after", type=int, default=0, metavar="REVISION", help="resume after this position")
    q.add_argument("--count", type=int, default=0, help="stop after this many changes")
    add_api_options(q)
    q.set_defaults(func=watch_alerts)
    for name, help_text, reason_required in (
        ("ack", "acknowledge an alert: someone is on it", False),
        ("dismiss", "mark an alert as not an issue", True),
        ("suppress", "suppress an alert until a time; an occurrence after that reopens it", True),
        ("reopen", "set an alert back to open", False),
    ):
        q = actions.add_parser(name, help=help_text, description=help_text)
        q.add_argument("fingerprint", help="the alert's fingerprint (alerts list shows it)")
        q.add_argument("--reason", required=reason_required, default="", help="why (recorded with your name)")
        if name == "suppress":
            q.add_argument(
                "--for", dest="duration", required=True, metavar="DURATION", help="e.g. 8h, 2d, 1w"
            )
        add_api_options(q)
        q.set_defaults(func=change_state)
