"""Policy evaluation throughput on a typical event mix, in one thread (one core).

`CompiledPolicy.evaluate` is what the controller runs for every event it receives. The goal is
200,000 events/s per core. Run alone: `python -m bench.evaluate [--quick] [--mix typical|legacy]`.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import time
from collections.abc import Callable

from bench.results import Section, Table, goal, median, rate, say
from telltale.engine import CompiledPolicy, Policy, load_builtin_policies, parse_document, to_document
from telltale.engine.geo import OfflineCountries
from telltale.v1 import common_pb2 as c

GOAL_EVENTS_PER_S = 200_000
NOW = 1_800_000_000 * 1_000_000_000


def legacy_mix(rng: random.Random, n: int) -> list[c.Event]:
    """`n` events of the five kinds the first shim reported: 35% connect, 20% exec, 20% process
    start (mostly forks), 13% listen, 12% bind. Kept to compare with earlier figures."""

    def event(kind: c.EventKind.ValueType, **detail: object) -> c.Event:
        process = c.ProcessInfo(pid=rng.randint(2, 9999), exe="/usr/bin/python3", euid=1000, cwd="/srv")
        return c.Event(kind=kind, count=1, process=process, **detail)  # type: ignore[arg-type]

    def sock(address: str, port: int, sock_type: int = 1) -> c.SocketDetail:
        return c.SocketDetail(
            type=sock_type, address=c.SocketAddress(family="inet", address=address, port=port)
        )

    events = []
    for _ in range(n):
        r = rng.random()
        if r < 0.35:
            address = f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
            events.append(event(c.EVENT_KIND_CONNECT, socket=sock(address, 443)))
        elif r < 0.55:
            path = rng.choice(
                ["/usr/bin/ls", "/usr/bin/curl", "/bin/sh", "/usr/local/bin/app", "/tmp/x", "git"]
            )
            events.append(event(c.EVENT_KIND_EXEC, exec=c.ExecDetail(path=path, argv=[path])))
        elif r < 0.75:
            start = event(c.EVENT_KIND_PROCESS_START)
            start.process.forked = rng.random() < 0.7
            events.append(start)
        elif r < 0.88:
            address = rng.choice(["0.0.0.0", "127.0.0.1"])
            events.append(event(c.EVENT_KIND_LISTEN, socket=sock(address, rng.choice([80, 8080, 9000]))))
        else:
            address = rng.choice(["0.0.0.0", "127.0.0.1"])
            bind = sock(address, rng.randint(1024, 65000), rng.choice([1, 2]))
            events.append(event(c.EVENT_KIND_BIND, socket=bind))
    return events


TYPICAL_SHARES = (
    ("connect", 0.21),
    ("exec", 0.12),
    ("process start", 0.15),
    ("file open", 0.14),
    ("library load", 0.07),
    ("listen/bind", 0.08),
    ("accept", 0.05),
    ("send", 0.05),
    ("resolve", 0.04),
    ("socket", 0.03),
    ("file change", 0.02),
    ("credentials", 0.01),
    ("memory", 0.01),
    ("unsafe call", 0.01),
    ("crypto", 0.01),
)


def typical_mix(rng: random.Random, n: int) -> list[c.Event]:
    """`n` events of every kind the complete shim reports, in the shares of TYPICAL_SHARES.

    Most behaviour is ordinary (private destinations, system programs and libraries, the
    application's own files); a few percent of the events raise a finding under Standard.
    """

    def private() -> str:
        return f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"

    def public() -> str:
        first = rng.choice([34, 52, 104, 151, 185])
        return f"{first}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"

    def event(kind: c.EventKind.ValueType, *, errno: int = 0, **detail: object) -> c.Event:
        process = c.ProcessInfo(pid=rng.randint(2, 9999), exe="/usr/bin/python3", euid=1000, cwd="/srv/app")
        built = c.Event(kind=kind, count=1, process=process, **detail)  # type: ignore[arg-type]
        built.result.known = True
        built.result.error_number = errno
        return built

    def sock(address: str, port: int, sock_type: int = 1) -> c.SocketDetail:
        family = "inet6" if ":" in address else "inet"
        return c.SocketDetail(
            domain=10 if family == "inet6" else 2,
            type=sock_type,
            address=c.SocketAddress(family=family, address=address, port=port),
        )

    def connect() -> c.Event:
        r = rng.random()
        if r < 0.8:
            return event(c.EVENT_KIND_CONNECT, socket=sock(private(), rng.choice([443, 5432, 6379, 8080])))
        port = 80 if r < 0.85 else 443
        return event(c.EVENT_KIND_CONNECT, errno=115, socket=sock(public(), port))

    def execs() -> c.Event:
        path = rng.choice(
            ["/usr/bin/ls", "/usr/bin/curl", "/usr/bin/git", "/usr/local/bin/app", "git", "/bin/sh", "/tmp/x"]
        )
        return event(c.EVENT_KIND_EXEC, exec=c.ExecDetail(path=path, argv=[path]))

    def start() -> c.Event:
        started = event(c.EVENT_KIND_PROCESS_START)
        started.process.forked = rng.random() < 0.7
        if not started.process.forked and rng.random() < 0.2:
            started.process.secret_env_names.append("DB_PASSWORD")
        return started

    def file_open() -> c.Event:
        path = rng.choice(
            [
                "/etc/hosts",
                "/etc/resolv.conf",
                "/etc/ssl/certs/ca-certificates.crt",
                f"/srv/app/data/{rng.randint(0, 5000)}.json",
                f"/proc/{rng.randint(2, 9999)}/status",
                "/usr/lib/python3.11/json/__init__.py",
            ]
        )
        write = path.startswith("/srv/") and rng.random() < 0.3
        return event(
            c.EVENT_KIND_FILE_OPEN, file=c.FileDetail(path=path, write=write, flags=0o101 if write else 0)
        )

    def library() -> c.Event:
        path = rng.choice(
            [
                "/usr/lib/x86_64-linux-gnu/libssl.so.3",
                "/usr/lib/x86_64-linux-gnu/libz.so.1",
                "/srv/venv/lib/python3.11/site-packages/_cffi_backend.so",
                "/usr/lib/python3.11/lib-dynload/_json.so",
            ]
        )
        return event(
            c.EVENT_KIND_LIBRARY_LOAD, library=c.LibraryDetail(path=path, at_start=rng.random() < 0.5)
        )

    def listen_or_bind() -> c.Event:
        address = rng.choice(["0.0.0.0", "127.0.0.1", "10.0.0.5"])
        if rng.random() < 0.5:
            return event(c.EVENT_KIND_LISTEN, socket=sock(address, rng.choice([80, 8080, 9000])))
        return event(c.EVENT_KIND_BIND, socket=sock(address, rng.randint(1024, 65000), rng.choice([1, 2])))

    def file_change() -> c.Event:
        n = rng.randint(0, 999)
        change = c.FileChangeDetail(
            change=c.FILE_CHANGE_KIND_RENAME, path=f"/srv/app/tmp/{n}", new_path=f"/srv/app/data/{n}"
        )
        return event(c.EVENT_KIND_FILE_CHANGE, file_change=change)

    makers: dict[str, Callable[[], c.Event]] = {
        "connect": connect,
        "exec": execs,
        "process start": start,
        "file open": file_open,
        "library load": library,
        "listen/bind": listen_or_bind,
        "accept": lambda: event(c.EVENT_KIND_ACCEPT, socket=sock(private(), 8080)),
        "send": lambda: event(c.EVENT_KIND_SEND, socket=sock("10.0.0.2", rng.choice([53, 8125]), 2)),
        "resolve": lambda: event(
            c.EVENT_KIND_RESOLVE, resolve=c.ResolveDetail(name=rng.choice(["db.internal", "api.example.com"]))
        ),
        "socket": lambda: event(
            c.EVENT_KIND_SOCKET, socket=c.SocketDetail(domain=2, type=rng.choice([1, 2]))
        ),
        "file change": file_change,
        "credentials": lambda: event(
            c.EVENT_KIND_CREDENTIALS, credentials=c.CredentialDetail(function="setgroups", groups=[1000])
        ),
        "memory": lambda: event(
            c.EVENT_KIND_MEMORY_PROTECT, memory=c.MemoryDetail(function="mprotect", protection=5, length=4096)
        ),
        "unsafe call": lambda: event(c.EVENT_KIND_UNSAFE_CALL, call=c.CallDetail(function="strcpy")),
        "crypto": lambda: event(
            c.EVENT_KIND_CRYPTO, crypto=c.CryptoDetail(algorithm="SHA1", purpose="digest")
        ),
    }
    names = [name for name, _ in TYPICAL_SHARES]
    weights = [share for _, share in TYPICAL_SHARES]
    return [makers[name]() for name in rng.choices(names, weights, k=n)]


MIXES = {"typical": typical_mix, "legacy": legacy_mix}


def tuned_max_alert(rng: random.Random, base: Policy) -> Policy:
    """Max Alert with a 1,000-network blocklist and two exceptions on the shell rule."""
    networks = ", ".join(
        f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.0/24" for _ in range(1000)
    )
    rules = dict(base.rules)
    blocklist = rules["network.blocklisted_destination"]
    rules["network.blocklisted_destination"] = dataclasses.replace(
        blocklist, params={**blocklist.params, "networks": ()}
    )
    text = to_document(dataclasses.replace(base, rules=rules)).replace(
        "\n        networks: []", f"\n        networks: [{networks}]"
    )
    text = text.replace(
        "      params:\n        shells:",
        "      exceptions:\n      - {binary: /usr/lib/*, reason: r}\n      - {path: /bin/ba*, reason: r}\n"
        "      params:\n        shells:",
    )
    return parse_document(text)


def _pass(compiled: CompiledPolicy, events: list[c.Event], workload: c.Workload) -> tuple[float, int]:
    """One pass over `events`: events/s and the number of findings."""
    findings = 0
    start = time.perf_counter()
    for e in events:
        findings += len(compiled.evaluate(e, workload, NOW))
    return len(events) / (time.perf_counter() - start), findings


def _mix_text(mix: str) -> str:
    if mix == "legacy":
        return "35% connect, 20% exec, 20% process start, 13% listen, 12% bind"
    return ", ".join(f"{share:.0%} {name}" for name, share in TYPICAL_SHARES)


def run(quick: bool = False, mixes: tuple[str, ...] = ("typical", "legacy")) -> Section:
    """For each event mix, rounds of one pass per policy, interleaved; the median round is each
    policy's figure."""
    n_events, rounds = (5_000, 3) if quick else (10_000, 7)
    workload = c.Workload(id="w-1", application="shop", component="api")
    builtin = load_builtin_policies()
    countries = OfflineCountries()
    table = Table(
        (
            "event mix",
            "policy",
            "events/s (median)",
            "best round",
            "vs Standard",
            "events raising a finding",
            "goal ≥ 200k/s",
        )
    )
    started = time.perf_counter()
    for mix in mixes:
        rng = random.Random(1)
        events = MIXES[mix](rng, n_events)
        configs = {
            "Standard": builtin["Standard"],
            "Max Alert": builtin["Max Alert"],
            "Max Alert, 1000-network blocklist, 2 exceptions": tuned_max_alert(rng, builtin["Max Alert"]),
        }
        compiled = {
            label: CompiledPolicy.compile(policy, countries=countries) for label, policy in configs.items()
        }
        findings = {
            label: _pass(policy, events, workload)[1] for label, policy in compiled.items()
        }  # warm-up
        rates: dict[str, list[float]] = {label: [] for label in configs}
        for n in range(rounds):
            for label, policy in compiled.items():
                rates[label].append(_pass(policy, events, workload)[0])
            say(
                f"  evaluate  {mix} round {n + 1}/{rounds}: "
                + ", ".join(f"{k} {rate(v[-1])}" for k, v in rates.items())
            )
        baseline = rates["Standard"]
        for label, values in rates.items():
            mid = median(values)
            ratio = median([v / b for v, b in zip(values, baseline, strict=True)])
            row = (
                mix,
                label,
                rate(mid),
                rate(max(values)),
                "—" if label == "Standard" else f"{ratio:.2f}x",
                f"{findings[label] / len(events):.0%}",
                goal(mid >= GOAL_EVENTS_PER_S),
            )
            say(
                f"  evaluate  {mix:8} {label:48} {row[2]:>10}  (best {row[3]}, vs Standard {row[4]}, "
                f"goal {row[6]})"
            )
            table.add(*row)
    described = "; ".join(f"{mix}: {_mix_text(mix)}" for mix in mixes)
    return Section(
        title="Policy evaluation throughput",
        method=(
            f"`CompiledPolicy.evaluate` over {n_events:,} events per mix ({described}) in one thread, "
            "policies compiled with the offline country data. After a warm-up pass, "
            f"{rounds} rounds of one pass per policy, interleaved so that the machine's noise hits "
            "each alike; the figure is the median round, 'vs Standard' the median of per-round "
            "ratios. The typical mix has every kind of event the complete shim reports; the legacy "
            "mix, the five kinds of the first shim, compares with earlier figures. Goal: 200k "
            "events/s per core."
        ),
        tables=[table],
        seconds=time.perf_counter() - started,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer events and rounds")
    parser.add_argument(
        "--mix", choices=sorted(MIXES), action="append", help="event mix to measure (default: all)"
    )
    args = parser.parse_args()
    run(args.quick, tuple(args.mix) if args.mix else ("typical", "legacy"))


if __name__ == "__main__":
    main()
