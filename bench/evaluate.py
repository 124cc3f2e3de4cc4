"""Policy evaluation throughput on a typical event mix, in one thread (one core).

`CompiledPolicy.evaluate` is what the controller runs for every event it receives. The goal is
200,000 events/s per core. Run alone: `python -m bench.evaluate [--quick]`.
"""

from __future__ import annotations

import argparse
import random
import time

from bench.results import Section, Table, goal, median, rate, say
from telltale.engine import CompiledPolicy, Policy, load_builtin_policies, parse_document, to_document
from telltale.v1 import common_pb2 as c

GOAL_EVENTS_PER_S = 200_000
NOW = 1_800_000_000 * 1_000_000_000


def event_mix(rng: random.Random, n: int) -> list[c.Event]:
    """`n` events: 35% connect, 20% exec, 20% process start (mostly forks), 13% listen, 12% bind."""

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


def tuned_max_alert(rng: random.Random, base: Policy) -> Policy:
    """Max Alert with a 1,000-network blocklist and two exceptions on the shell rule."""
    networks = ", ".join(
        f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.0/24" for _ in range(1000)
    )
    text = to_document(base).replace("networks: [169.254.169.254/32]", f"networks: [{networks}]")
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


def run(quick: bool = False) -> Section:
    """Rounds of one pass per policy, interleaved; the median round is each policy's figure."""
    n_events, rounds = (5_000, 3) if quick else (10_000, 7)
    rng = random.Random(1)
    events = event_mix(rng, n_events)
    workload = c.Workload(id="w-1", application="shop", component="api")
    builtin = load_builtin_policies()
    configs = {
        "Standard": builtin["Standard"],
        "Max Alert": builtin["Max Alert"],
        "Max Alert, 1000-network blocklist, 2 exceptions": tuned_max_alert(rng, builtin["Max Alert"]),
    }
    started = time.perf_counter()
    compiled = {label: CompiledPolicy.compile(policy) for label, policy in configs.items()}
    findings = {label: _pass(policy, events, workload)[1] for label, policy in compiled.items()}  # warm-up
    rates: dict[str, list[float]] = {label: [] for label in configs}
    for n in range(rounds):
        for label, policy in compiled.items():
            rates[label].append(_pass(policy, events, workload)[0])
        say(
            f"  evaluate  round {n + 1}/{rounds}: "
            + ", ".join(f"{k} {rate(v[-1])}" for k, v in rates.items())
        )
    table = Table(
        (
            "policy",
            "events/s (median)",
            "best round",
            "vs Standard",
            "events raising a finding",
            "goal ≥ 200k/s",
        )
    )
    baseline = rates["Standard"]
    for label, values in rates.items():
        mid = median(values)
        ratio = median([v / b for v, b in zip(values, baseline, strict=True)])
        row = (
            label,
            rate(mid),
            rate(max(values)),
            "—" if label == "Standard" else f"{ratio:.2f}x",
            f"{findings[label] / len(events):.0%}",
            goal(mid >= GOAL_EVENTS_PER_S),
        )
        say(f"  evaluate  {label:48} {row[1]:>10}  (best {row[2]}, vs Standard {row[3]}, goal {row[5]})")
        table.add(*row)
    return Section(
        title="Policy evaluation throughput",
        method=(
            f"`CompiledPolicy.evaluate` over {n_events:,} events (35% connect, 20% exec, 20% process "
            f"start, 13% listen, 12% bind) in one thread. After a warm-up pass, {rounds} rounds of one "
            "pass per policy, interleaved so that the machine's noise hits each alike; the figure is "
            "the median round, 'vs Standard' the median of per-round ratios. Goal: 200k events/s per "
            "core."
        ),
        tables=[table],
        seconds=time.perf_counter() - started,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer events and rounds")
    run(parser.parse_args().quick)


if __name__ == "__main__":
    main()
