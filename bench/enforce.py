"""Network enforcement: how long `NftablesFirewall.apply()` takes to replace the blocked set.

The firewall runs in a child process inside a network namespace this benchmark creates and removes
(nftables in the host's own namespace is never touched). Needs root; without it the section says
it was skipped. Run alone: `python -m bench.enforce [--quick]`; `make bench` runs it with the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import time

from bench.results import Section, Table, median, say

# Runs in the namespace: argv = sizes, rounds; prints {label: [seconds, ...]} as one JSON line.
_CHILD = r"""
import ipaddress, json, sys, time
from telltale.nodeagent import enforce

sizes, rounds = json.loads(sys.argv[1]), int(sys.argv[2])

def networks(count, offset):
    # disjoint /24s (every other one) so nothing collapses: `count` elements in the set
    base = int(ipaddress.IPv4Address("11.0.0.0"))
    return [str(ipaddress.IPv4Network((base + (2 * i + offset) * 256, 24))) for i in range(count)]

firewall = enforce.NftablesFirewall()
own = enforce.host_addresses()
timings = {}
for size in sizes:
    lists = [networks(size, 0), networks(size, 1)]
    firewall.remove()
    started = time.perf_counter()
    firewall.apply(lists[0])
    timings[f"{size}: first apply (creates the table)"] = [time.perf_counter() - started]
    for label, work in (
        (f"{size}: plan() alone (validate, collapse, exclude)", lambda i: enforce.plan(lists[i % 2], own)),
        (f"{size}: apply() replacing the set", lambda i: firewall.apply(lists[i % 2])),
        (f"{size}: current()", lambda i: firewall.current()),
    ):
        timings[label] = []
        for i in range(rounds):
            started = time.perf_counter()
            work(i + 1)
            timings[label].append(time.perf_counter() - started)
firewall.remove()
print(json.dumps(timings))
"""


def run(quick: bool = False) -> Section:
    """Median time per operation for 10,000 networks (and 100,000 unless quick), over several rounds."""
    title = "Network enforcement apply time"
    if os.geteuid() != 0:
        return Section(title=title, method="skipped: needs root to create a network namespace")
    sizes, rounds = ([10_000], 3) if quick else ([10_000, 100_000], 7)
    namespace = f"tt-nft-bench-{secrets.token_hex(3)}"
    started = time.perf_counter()
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        subprocess.run(["ip", "-n", namespace, "link", "set", "lo", "up"], check=True)
        done = subprocess.run(
            ["ip", "netns", "exec", namespace, sys.executable, "-c", _CHILD, json.dumps(sizes), str(rounds)],
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        subprocess.run(["ip", "netns", "del", namespace], check=False)
    timings: dict[str, list[float]] = json.loads(done.stdout.splitlines()[-1])
    table = Table(("networks: operation", "median", "min", "max"))
    for label, values in timings.items():
        cells = (
            f"{median(values) * 1e3:.0f} ms",
            f"{min(values) * 1e3:.0f} ms",
            f"{max(values) * 1e3:.0f} ms",
        )
        table.add(label, *cells)
        say(f"  enforce   {label:52} {cells[0]:>8}  (min {cells[1]}, max {cells[2]})")
    return Section(
        title=title,
        method=(
            f"`NftablesFirewall.apply()` in a child process inside a fresh network namespace, on "
            f"{' and '.join(f'{s:,}' for s in sizes)} disjoint IPv4 /24s, alternating between two such lists "
            f"so every apply really replaces the set; {rounds} rounds, median, min and max. apply() includes "
            "plan() (validation, collapse, own-address exclusion) and the one libnftables transaction."
        ),
        tables=[table],
        seconds=time.perf_counter() - started,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10,000 networks only, fewer rounds")
    run(parser.parse_args().quick)


if __name__ == "__main__":
    main()
