"""Evaluation throughput on a typical event mix, one core: `python tests/engine/bench_evaluate.py`.

Not a test (pytest does not collect it): timing depends on the machine. Prints events/s for the
built-in policies and for Max Alert with a 1,000-network blocklist and exceptions.
"""

from __future__ import annotations

import random
import time

from telltale.engine import CompiledPolicy, Policy, load_builtin_policies, parse_document, to_document
from telltale.v1 import common_pb2 as c

EVENTS = 10_000
ROUNDS = 5
NOW = 1_800_000_000 * 1_000_000_000


def event_mix(rng: random.Random) -> list[c.Event]:
    """35% connect, 20% exec, 20% process start (mostly forks), 13% listen, 12% bind."""

    def event(kind: c.EventKind.ValueType, **detail: object) -> c.Event:
        process = c.ProcessInfo(pid=rng.randint(2, 9999), exe="/usr/bin/python3", euid=1000, cwd="/srv")
        return c.Event(kind=kind, count=1, process=process, **detail)  # type: ignore[arg-type]

    def sock(address: str, port: int, sock_type: int = 1) -> c.SocketDetail:
        return c.SocketDetail(
            type=sock_type, address=c.SocketAddress(family="inet", address=address, port=port)
        )

    events = []
    for _ in range(EVENTS):
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


def main() -> None:
    rng = random.Random(1)
    events = event_mix(rng)
    workload = c.Workload(id="w-1", application="shop", component="api")
    builtin = load_builtin_policies()
    configs = [
        ("Standard", builtin["Standard"]),
        ("Max Alert", builtin["Max Alert"]),
        ("Max Alert, 1000-network blocklist, 2 exceptions", tuned_max_alert(rng, builtin["Max Alert"])),
    ]
    for label, policy in configs:
        compiled = CompiledPolicy.compile(policy)
        for e in events:  # warm caches
            compiled.evaluate(e, workload, NOW)
        best = 0.0
        findings = 0
        for _ in range(ROUNDS):
            findings = 0
            start = time.perf_counter()
            for e in events:
                findings += len(compiled.evaluate(e, workload, NOW))
            best = max(best, len(events) / (time.perf_counter() - start))
        share = findings / len(events)
        print(f"{label:50} {best / 1000:6.0f}k events/s   {share:.0%} of events raise a finding")


if __name__ == "__main__":
    main()
