"""Simulated node agents for the fault tests: a script run inside a node namespace.

Each simulated agent speaks the real protocol over mutual TLS with a node certificate of its own:
Hello, numbered event batches (each event one launch of /bin/sh by a workload of application
APP), heartbeats, PolicyApplied for every policy update. Like `telltale agent`, it keeps every
batch until it is acknowledged, and when its stream breaks it connects to the next controller
and, after the Welcome (which says the last sequence number recorded), sends again every
unacknowledged batch above it.

    python simagents.py CONFIG.json

CONFIG holds {"controllers": [HOST:PORT, …], "ca": PEM path, "certs": {node_id: [crt, key]},
"app": application name, "interval": seconds between batches, "events": events per batch}.

Prints "ready" once every agent was welcomed; reads "stop" on stdin, then stops producing, waits
until every batch is acknowledged (or 60 s) and prints one JSON line: per agent, the batches and
events sent, the last acknowledged sequence number, and the monotonic times of stream breaks and
Welcomes (time.monotonic is CLOCK_MONOTONIC: comparable with the test's clock).
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import grpc

from telltale.v1 import agent_pb2, agent_pb2_grpc, common_pb2


class Sim:
    def __init__(self, node_id: str, cert: list[str], config: dict[str, Any]) -> None:
        self.node_id = node_id
        self.config = config
        self.credentials = grpc.ssl_channel_credentials(
            root_certificates=Path(config["ca"]).read_bytes(),
            private_key=Path(cert[1]).read_bytes(),
            certificate_chain=Path(cert[0]).read_bytes(),
        )
        self.instance = uuid.uuid4().hex
        self.next_seq = 0  # set by the first Welcome
        self.unacked: dict[int, agent_pb2.EventBatch] = {}
        self.acked = 0
        self.sent_batches = 0
        self.sent_events = 0
        self.breaks: list[float] = []
        self.errors: list[str] = []
        self.welcomes: list[tuple[float, str]] = []
        self.welcomed = asyncio.Event()
        self.producing = True
        self.changed = asyncio.Event()

    def batch(self) -> agent_pb2.EventBatch:
        app = self.config["app"]
        workload = common_pb2.Workload(id=f"w-{self.node_id}", application=app, component=self.node_id)
        events = [
            common_pb2.Event(
                kind=common_pb2.EVENT_KIND_EXEC,
                workload_id=workload.id,
                count=1,
                process=common_pb2.ProcessInfo(pid=100 + i, exe="/usr/bin/python3"),
                exec=common_pb2.ExecDetail(path="/bin/sh"),
            )
            for i in range(self.config["events"])
        ]
        seq = self.next_seq
        self.next_seq += 1
        return agent_pb2.EventBatch(seq=seq, workloads=[workload], events=events)

    async def run(self) -> None:
        controllers = self.config["controllers"]
        attempt = 0
        while True:
            target = controllers[attempt % len(controllers)]
            attempt += 1
            try:
                await self.session(target)
            except (grpc.RpcError, ConnectionError, asyncio.InvalidStateError):
                pass  # the stream broke (a write after the call ended raises InvalidStateError)
            except Exception as exc:
                self.errors.append(repr(exc))
            if not self.producing and not self.unacked:
                return
            self.breaks.append(time.monotonic())
            await asyncio.sleep(0.2 * random.uniform(0.5, 1.0))

    async def session(self, target: str) -> None:
        options = [("grpc.use_local_subchannel_pool", 1)]
        async with grpc.aio.secure_channel(target, self.credentials, options=options) as channel:
            call = agent_pb2_grpc.AgentServiceStub(channel).Connect()
            hello = agent_pb2.Hello(
                node_id=self.node_id, hostname=self.node_id, instance_id=self.instance,
                agent_version="simagents", last_acked_seq=self.acked,
            )  # fmt: skip
            await call.write(agent_pb2.ConnectRequest(hello=hello))
            lock = asyncio.Lock()
            live = asyncio.Event()  # this session was welcomed

            async def write(request: agent_pb2.ConnectRequest) -> None:
                async with lock:
                    await call.write(request)

            async def read() -> None:
                async for response in call:
                    kind = response.WhichOneof("message")
                    if kind == "welcome":
                        last = response.welcome.last_seq
                        if not self.welcomes:
                            self.next_seq = last + 1
                        for seq in [s for s in self.unacked if s <= last]:
                            del self.unacked[seq]
                        self.acked = max(self.acked, last)
                        self.welcomes.append((time.monotonic(), target))
                        for seq in sorted(self.unacked):
                            await write(agent_pb2.ConnectRequest(batch=self.unacked[seq]))
                        self.welcomed.set()
                        live.set()
                    elif kind == "batch_ack":
                        for seq in [s for s in self.unacked if s <= response.batch_ack.seq]:
                            del self.unacked[seq]
                        self.acked = max(self.acked, response.batch_ack.seq)
                    elif kind == "policy_update":
                        revision = response.policy_update.revision
                        await write(
                            agent_pb2.ConnectRequest(
                                policy_applied=agent_pb2.PolicyApplied(revision=revision)
                            )
                        )
                    self.changed.set()

            reader = asyncio.create_task(read())
            try:
                while not reader.done():
                    if live.is_set():
                        if self.producing and len(self.unacked) < 16:
                            batch = self.batch()
                            self.unacked[batch.seq] = batch
                            self.sent_batches += 1
                            self.sent_events += len(batch.events)
                            await write(agent_pb2.ConnectRequest(batch=batch))
                        elif not self.producing and not self.unacked:
                            return
                    await asyncio.wait([reader], timeout=self.config["interval"] * random.uniform(0.5, 1.5))
                await reader  # raises the stream's error
                raise ConnectionError("the controller ended the stream")
            finally:
                reader.cancel()
                call.cancel()

    def report(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "sent_batches": self.sent_batches,
            "sent_events": self.sent_events,
            "acked": self.acked,
            "unacked": len(self.unacked),
            "breaks": self.breaks,
            "welcomes": self.welcomes,
            "errors": self.errors[:3],
        }


async def main(config: dict[str, Any]) -> None:
    sims = [Sim(node, cert, config) for node, cert in config["certs"].items()]
    tasks = [asyncio.create_task(s.run()) for s in sims]
    await asyncio.wait_for(asyncio.gather(*(s.welcomed.wait() for s in sims)), 120)
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    while (await loop.run_in_executor(None, sys.stdin.readline)).strip() != "stop":
        pass
    for s in sims:
        s.producing = False
    await asyncio.wait(tasks, timeout=60)
    print(json.dumps([s.report() for s in sims]), flush=True)
    for task in tasks:
        task.cancel()


if __name__ == "__main__":
    asyncio.run(main(json.loads(Path(sys.argv[1]).read_text())))
