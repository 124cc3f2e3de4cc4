"""Fleet scale: how many agents one controller holds, what each costs, how fast a policy change
reaches all of them, and how many events per second the controller records.

One etcd and one controller run as real processes; `bench.fleetsim` simulates the agents from
this process over the real agent protocol (one connection each). The fleet grows in steps, and at
each step the benchmark measures:

- the controller's resident memory, and what each added agent costs (goal ≤ 50 KB per agent);
- policy propagation: a change of the default policy through the API, until every agent has
  received it (agent side) and until the controller has recorded every agent's acknowledgement
  in etcd (watched directly); goal p99 ≤ 250 ms with 1,000 agents.

Then a smaller fleet streams events of the typical mix under the Standard policy at rising offered
rates, to show where the controller saturates: events acknowledged per second, and per second of
the controller's CPU time (goal ≥ 200 k events/s per core; `bench/evaluate.py` measures the policy
evaluation alone).

Run alone: `python -m bench.fleet [--quick]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aetcd
import grpc

from bench.fleetsim import Fleet, standard_templates
from bench.results import Section, Table, goal, percentile, rate, run_alone, say
from telltale.controller.etcd import spawn_embedded_etcd, wait_ready
from telltale.devcluster import LocalCluster
from telltale.netutil import split_host_port
from telltale.v1 import inventory_pb2, policy_pb2, policy_pb2_grpc

GOAL_AGENTS = 2000
GOAL_BYTES_PER_AGENT = 50_000
GOAL_PROPAGATION_P99_S = 0.250
GOAL_EVENTS_PER_CORE = 200_000
PREFIX = "/telltale/v1/"
POLICY = "FleetBench"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """The resident set size of process `pid`."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time process `pid` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class AckWatch:
    """The applied policy revision of every node, as the controller records it in etcd."""

    def __init__(self, client: aetcd.Client) -> None:
        self._client = client
        self.applied: dict[str, int] = {}
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        watch = await self._client.watch_prefix(f"{PREFIX}nodes/".encode())

        async def follow() -> None:
            async for event in watch:
                if event.kv.value:
                    node = inventory_pb2.Node.FromString(event.kv.value)
                    self.applied[node.node_id] = node.applied_policy_revision
                    self._changed.set()

        self._task = asyncio.create_task(follow())

    async def all_applied(self, node_ids: list[str], revision: int, within: float) -> float:
        """Wait until every node of `node_ids` is recorded at `revision` or later; returns when
        (monotonic). Raises TimeoutError naming how many are missing."""
        deadline = time.monotonic() + within
        while True:
            missing = [n for n in node_ids if self.applied.get(n, 0) < revision]
            if not missing:
                return time.monotonic()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"{len(missing)} of {len(node_ids)} acknowledgements of {revision} not recorded"
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.05))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


@dataclass
class Step:
    """The figures of one fleet size."""

    agents: int
    connect_s: float
    rss: int
    per_agent: float  # bytes per agent added in this step
    arrival_ms: list[float]  # per (agent, change): API call → update received by the agent
    recorded_ms: list[float]  # per change: API call → every acknowledgement recorded
    controller_cpu_ms: list[float]  # per change: the controller's CPU time until then
    simulator_cpu_ms: list[float]  # per change: this process's (the simulated agents') CPU time


async def _change_policy(stub: policy_pb2_grpc.PolicyServiceStub, flip: int) -> None:
    current = (await stub.GetPolicy(policy_pb2.GetPolicyRequest(name=POLICY))).policy
    current.description = f"fleet benchmark change {flip}"
    await stub.UpdatePolicy(policy_pb2.UpdatePolicyRequest(policy=current))


@dataclass
class Propagation:
    """What `changes` policy changes took: per (agent, change) arrival, and per change the time until
    every acknowledgement was recorded and the CPU time the controller and the simulator spent."""

    arrival_ms: list[float]
    recorded_ms: list[float]
    controller_cpu_ms: list[float]
    simulator_cpu_ms: list[float]


async def _propagate(
    fleets: list[Fleet], stub: policy_pb2_grpc.PolicyServiceStub, acks: AckWatch, changes: int, pid: int
) -> Propagation:
    agents = [a for fleet in fleets for a in fleet.agents]
    node_ids = [a.node_id for a in agents]
    result = Propagation([], [], [], [])
    arrivals, recorded = result.arrival_ms, result.recorded_ms
    for i in range(changes):
        before = max((a.stats.policy_updates[-1][0] for a in agents if a.stats.policy_updates), default=0)
        await asyncio.sleep(0.2)  # let the previous change's acknowledgements settle
        controller_cpu, simulator_cpu = cpu_seconds(pid), time.process_time()
        started = time.monotonic()
        await _change_policy(stub, i)
        got: list[float] = []
        for fleet in fleets:
            got += await fleet.wait_revision(before + 1, within=60)
        arrivals += [(at - started) * 1000 for at in got]
        revision = min(r for a in agents for r, _ in a.stats.policy_updates if r > before)
        done = await acks.all_applied(node_ids, revision, within=60)
        recorded.append((done - started) * 1000)
        result.controller_cpu_ms.append((cpu_seconds(pid) - controller_cpu) * 1000)
        result.simulator_cpu_ms.append((time.process_time() - simulator_cpu) * 1000)
    return result


async def _scale(api: str, pid: int, etcd: aetcd.Client, sizes: tuple[int, ...], changes: int) -> list[Step]:
    steps: list[Step] = []
    fleets: list[Fleet] = []
    acks = AckWatch(etcd)
    await acks.start()
    async with grpc.aio.insecure_channel(api) as channel:
        stub = policy_pb2_grpc.PolicyServiceStub(channel)
        await stub.ClonePolicy(policy_pb2.ClonePolicyRequest(source="Standard", name=POLICY))
        await stub.SetDefaultPolicy(policy_pb2.SetDefaultPolicyRequest(name=POLICY))
        try:
            # A first agent warms the controller's code paths, so the steps compare like with like.
            warm = Fleet(api, 1, [], prefix="warm")
            await warm.start()
            fleets.append(warm)
            await _propagate(fleets, stub, acks, 1, pid)
            previous_n, previous_rss = 1, rss_bytes(pid)
            for n in sizes:
                fleet = Fleet(api, n - previous_n, [], prefix=f"sim{n}")
                connect_s = await fleet.start(within=300)
                fleets.append(fleet)
                await asyncio.sleep(1.0)  # registrations written, first heartbeats spread
                rss = rss_bytes(pid)
                per_agent = (rss - previous_rss) / (n - previous_n)
                spread = await _propagate(fleets, stub, acks, changes, pid)
                arrival_ms, recorded_ms = spread.arrival_ms, spread.recorded_ms
                errors = [e for f in fleets for e in f.errors()]
                if errors:
                    raise RuntimeError(f"{len(errors)} agent streams failed; first: {errors[0]}")
                step = Step(
                    n,
                    connect_s,
                    rss,
                    per_agent,
                    arrival_ms,
                    recorded_ms,
                    spread.controller_cpu_ms,
                    spread.simulator_cpu_ms,
                )
                steps.append(step)
                say(
                    f"  fleet   {n:5} agents: connected in {connect_s:5.1f} s, controller RSS "
                    f"{rss / 2**20:6.1f} MiB ({per_agent / 1000:5.1f} KB per added agent)"
                )
                say(
                    f"  fleet   {n:5} agents: policy change → agents "
                    f"p50 {percentile(arrival_ms, 0.5):4.0f} ms p99 {percentile(arrival_ms, 0.99):4.0f} ms; "
                    "all acks recorded "
                    f"p50 {statistics.median(recorded_ms):4.0f} ms max {max(recorded_ms):4.0f} ms; CPU per "
                    f"change: controller {statistics.median(spread.controller_cpu_ms):4.0f} ms, simulated "
                    f"agents {statistics.median(spread.simulator_cpu_ms):4.0f} ms"
                )
                previous_n, previous_rss = n, rss
        finally:
            for fleet in fleets:
                await fleet.stop()
            await acks.stop()
    return steps


@dataclass
class Load:
    """Event throughput at one offered rate."""

    offered: float  # events/s, fleet-wide (inf = as fast as acknowledgements allow)
    achieved: float
    controller_cpu: float  # fraction of one core
    per_core: float  # events per controller CPU second


async def _throughput(
    api: str, pid: int, agents: int, rates: tuple[float, ...], seconds: float
) -> list[Load]:
    loads = []
    templates = standard_templates()
    for index, offered in enumerate(rates):
        per_agent = offered / agents if offered != float("inf") else 1e9
        fleet = Fleet(api, agents, templates, events_per_s=per_agent, prefix=f"load{index}")
        await fleet.start()
        try:
            await asyncio.sleep(1.0)  # ramp up
            events0, cpu0, t0 = fleet.events_acked(), cpu_seconds(pid), time.monotonic()
            await asyncio.sleep(seconds)
            events1, cpu1, t1 = fleet.events_acked(), cpu_seconds(pid), time.monotonic()
        finally:
            await fleet.stop()
        if fleet.errors():
            raise RuntimeError(f"agent streams failed: {fleet.errors()[0]}")
        achieved = (events1 - events0) / (t1 - t0)
        cpu = (cpu1 - cpu0) / (t1 - t0)
        load = Load(offered, achieved, cpu, (events1 - events0) / max(cpu1 - cpu0, 1e-9))
        loads.append(load)
        label = "unbounded" if offered == float("inf") else rate(offered)
        say(
            f"  fleet   offered {label:>9}: acknowledged {rate(achieved):>9}, controller CPU "
            f"{cpu * 100:4.0f} % of a core, {rate(load.per_core)} per core"
        )
    return loads


@dataclass(frozen=True)
class Plan:
    """What a run measures: fleet sizes, policy changes per size, offered event rates."""

    sizes: tuple[int, ...]
    changes: int
    rates: tuple[float, ...]
    seconds: float  # per rate


async def _measure(api: str, pid: int, etcd_endpoint: str, plan: Plan) -> tuple[list[Step], list[Load]]:
    host, port = split_host_port(etcd_endpoint)
    etcd = aetcd.Client(host=host, port=port, timeout=30)
    await etcd.connect()
    try:
        steps = await _scale(api, pid, etcd, plan.sizes, plan.changes)
        loads = await _throughput(api, pid, 20, plan.rates, plan.seconds)
    finally:
        await etcd.close()
    return steps, loads


def run(quick: bool = False) -> Section:
    """Start etcd and a controller, grow a simulated fleet, then load it; always stops them."""
    if quick:
        plan = Plan(sizes=(50, 200), changes=3, rates=(5_000, float("inf")), seconds=3.0)
    else:
        plan = Plan(
            sizes=(250, 500, 1000, 2000), changes=10, rates=(5_000, 20_000, 50_000, float("inf")), seconds=8.0
        )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="telltale-fleet-") as tmp:
        workdir = Path(tmp)
        etcd = spawn_embedded_etcd(workdir / "etcd")
        try:
            wait_ready(etcd)
            cluster = LocalCluster(workdir / "cluster", etcd_endpoint=etcd.endpoint, log_level="warning")
            cluster.workdir.mkdir(parents=True)
            cluster.start_controller()
            try:
                pid = cluster.processes["controller"].pid
                steps, loads = asyncio.run(_measure(cluster.api, pid, etcd.endpoint, plan))
            finally:
                cluster.stop()
        finally:
            etcd.stop()
    return _section(steps, loads, plan, time.perf_counter() - started)


def _section(steps: list[Step], loads: list[Load], plan: Plan, took: float) -> Section:
    scale = Table(
        (
            "agents",
            "connect all",
            "controller RSS",
            "per added agent",
            "change → agents p50",
            "p99",
            "→ all acks recorded p50",
            "max",
            "CPU per change: controller",
            "simulated agents",
        ),
        title="Fleet size",
    )
    for s in steps:
        scale.add(
            f"{s.agents:,}",
            f"{s.connect_s:.1f} s",
            f"{s.rss / 2**20:.0f} MiB",
            f"{s.per_agent / 1000:.1f} KB",
            f"{percentile(s.arrival_ms, 0.5):.0f} ms",
            f"{percentile(s.arrival_ms, 0.99):.0f} ms",
            f"{statistics.median(s.recorded_ms):.0f} ms",
            f"{max(s.recorded_ms):.0f} ms",
            f"{statistics.median(s.controller_cpu_ms):.0f} ms",
            f"{statistics.median(s.simulator_cpu_ms):.0f} ms",
        )
    load = Table(
        ("offered", "acknowledged", "controller CPU", "events per CPU second"), title="Event load (20 agents)"
    )
    for item in loads:
        load.add(
            "unbounded" if item.offered == float("inf") else rate(item.offered),
            rate(item.achieved),
            f"{item.controller_cpu * 100:.0f} % of a core",
            rate(item.per_core),
        )
    largest = steps[-1]
    at_1000 = next((s for s in steps if s.agents == 1000), None)
    goals = Table(("goal", "measured", "verdict"), title="Goals")
    goals.add(
        f"≥ {GOAL_AGENTS:,} concurrent agent streams",
        f"{largest.agents:,}",
        goal(largest.agents >= GOAL_AGENTS),
    )
    growth = [s.per_agent for s in steps]
    goals.add(
        f"≤ {GOAL_BYTES_PER_AGENT / 1000:.0f} KB per connected agent",
        f"{max(growth) / 1000:.1f} KB (largest step)",
        goal(max(growth) <= GOAL_BYTES_PER_AGENT),
    )
    if at_1000 is not None:
        p99 = percentile(at_1000.arrival_ms, 0.99)
        goals.add(
            "policy change → 1,000 agents p99 ≤ 250 ms",
            f"{p99:.0f} ms",
            goal(p99 <= GOAL_PROPAGATION_P99_S * 1000),
        )
        worst = max(at_1000.recorded_ms)
        goals.add(
            "… and every acknowledgement recorded",
            f"{statistics.median(at_1000.recorded_ms):.0f} ms median, {worst:.0f} ms max",
            goal(worst <= GOAL_PROPAGATION_P99_S * 1000),
        )
    best = max(loads, key=lambda item: item.per_core)
    goals.add(
        f"≥ {GOAL_EVENTS_PER_CORE // 1000} k events/s per core, through gRPC and etcd",
        rate(best.per_core),
        goal(best.per_core >= GOAL_EVENTS_PER_CORE),
    )
    notes = [
        "Each fleet-size step adds agents to the ones already connected; "
        f"{plan.changes} policy changes per step, each the description of the default policy, "
        "made through `UpdatePolicy`, timed from the call's start.",
        "'change → agents' is over every (agent, change) pair: when the agent received the update and "
        "sent its acknowledgement. 'all acks recorded' is per change: until the controller had written "
        "every agent's acknowledgement to etcd (a watch on the node records). 'CPU per change' is the "
        "CPU time the controller process, and the benchmark process that simulates every agent, used "
        "from the call until every acknowledgement was recorded (medians): when the simulator's "
        "approaches the wall time, the simulated agents, not the controller, set the pace.",
        "The simulated agents send heartbeats only during the fleet-size steps; each agent has its own "
        "TCP connection. The simulator shares the machine's two cores with the controller and etcd.",
        f"Event load: 20 agents, batches of 64 events of the typical mix replayed (mostly repeats of "
        f"known alerts, as in a deduplicating fleet), at most 4 batches in flight per agent; "
        f"{plan.seconds:.0f} s per rate. 'events per CPU second' divides acknowledged events by the "
        "controller process's CPU time (etcd's is not counted).",
    ]
    return Section(
        title="Fleet scale",
        method=(
            "One etcd and one controller (`telltale controller --plaintext`) as processes; "
            "`bench/fleetsim.py` simulates node agents over the real `AgentService.Connect` protocol "
            "from the benchmark process."
        ),
        tables=[goals, scale, load],
        notes=notes,
        seconds=took,
    )


if __name__ == "__main__":
    run_alone(run, __doc__, "fleets of 50 and 200 agents, two event rates")
