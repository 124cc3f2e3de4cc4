"""Replicas on a real etcd: registration and election (membership.py), and the etcd client's
endpoints, TLS and authentication options (etcdclient.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import aetcd
import pytest
from etcdcluster import EtcdCluster, make_tls

from telltale.controller.etcd import EmbeddedEtcd
from telltale.controller.etcdclient import EtcdAuthError, EtcdClient, EtcdSettings, channel_target
from telltale.controller.etcdstore import EtcdStore
from telltale.controller.membership import Membership
from telltale.controller.server import ConfigError, ControllerConfig
from telltale.v1 import inventory_pb2

TTL_S = 2
WAIT_S = 15.0


async def _until(condition: Callable[[], Awaitable[bool]], what: str, within: float = WAIT_S) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {within:.0f}s waiting for {what}")


class Replica:
    """A Membership with its own client, and duties that only say they are running."""

    def __init__(self, etcd: EmbeddedEtcd, prefix: str, name: str) -> None:
        self.client = EtcdClient(EtcdSettings((etcd.endpoint,)))
        self.store = EtcdStore(self.client, prefix)
        record = inventory_pb2.ControllerRecord(controller_id=name, listen="127.0.0.1:1", version="test")
        self.membership = Membership(self.client, prefix, self.store, record, ttl=TTL_S)
        self.terms = 0

    async def duties(self) -> None:
        self.terms += 1
        await asyncio.Event().wait()

    async def start(self) -> Replica:
        await self.membership.start(self.duties)
        return self

    async def stop(self) -> None:
        await self.membership.close()
        await self.client.close()


def _run(etcd: EmbeddedEtcd, body: Callable[[str], Awaitable[None]]) -> None:
    asyncio.run(body(f"/test/{uuid.uuid4().hex}/"))


def test_one_replica_leads_and_another_takes_over_when_it_resigns(etcd: EmbeddedEtcd) -> None:
    """Of two replicas one runs the duties; when it shuts down the other does, and the first's
    registration is gone."""

    async def body(prefix: str) -> None:
        a = await Replica(etcd, prefix, "ctl-a").start()
        await _until(lambda: _true(a.membership.is_leader), "a to lead")
        b = await Replica(etcd, prefix, "ctl-b").start()
        try:
            registered = await b.client.get_prefix(f"{prefix}controllers/".encode())
            assert sorted(kv.key.decode().rsplit("/", 1)[1] for kv in registered) == ["ctl-a", "ctl-b"]
            record = inventory_pb2.ControllerRecord()
            record.ParseFromString(next(kv.value for kv in registered if kv.key.endswith(b"ctl-b")))
            assert (record.controller_id, record.version) == ("ctl-b", "test")
            await asyncio.sleep(0.2)
            assert not b.membership.is_leader
            assert (a.terms, b.terms) == (1, 0)
            await a.stop()
            await _until(lambda: _true(b.membership.is_leader), "b to lead after a resigned", within=3)
            assert b.terms == 1
            registered = await b.client.get_prefix(f"{prefix}controllers/".encode())
            assert [kv.key.decode().rsplit("/", 1)[1] for kv in registered] == ["ctl-b"]
        finally:
            await b.stop()
            await a.stop()

    _run(etcd, body)


async def _true(value: bool) -> bool:
    return value


def test_a_lost_lease_is_replaced_and_the_liveness_keys_written_again(etcd: EmbeddedEtcd) -> None:
    """When etcd drops a replica's lease (a partition longer than the TTL), the replica registers
    on a new lease, rewrites the liveness keys of the nodes it holds, and campaigns again."""

    async def body(prefix: str) -> None:
        a = await Replica(etcd, prefix, "ctl-a").start()
        try:
            await _until(lambda: _true(a.membership.is_leader), "a to lead")
            handle = await a.membership.node_connected("node-1")
            assert await a.store.live_nodes() == {"node-1": handle.value}
            assert handle.value.startswith("ctl-a/")
            old_lease = a.membership.lease_id
            await a.client.revoke_lease(old_lease)  # as etcd does when the TTL passes unrefreshed
            assert await a.store.live_nodes() == {}

            async def recovered() -> bool:
                return (
                    a.membership.lease_id != old_lease
                    and a.membership.is_leader
                    and await a.store.live_nodes() == {"node-1": handle.value}
                )

            await _until(recovered, "a new lease, the liveness key back, and leadership")
            assert await a.client.get(f"{prefix}controllers/ctl-a".encode()) is not None
            assert a.terms == 2
            await a.membership.node_disconnected(handle)
            assert await a.store.live_nodes() == {}
        finally:
            await a.stop()

    _run(etcd, body)


def test_a_stream_that_ends_after_the_nodes_next_one_opened_leaves_the_liveness_key(
    etcd: EmbeddedEtcd,
) -> None:
    """Two overlapping streams of one node on one replica: the first ending after the second opened
    (in either order of their etcd writes) leaves the key; the last one ending removes it; a stream
    of the node on another replica is never undone by this one."""

    async def body(prefix: str) -> None:
        a = await Replica(etcd, prefix, "ctl-a").start()
        b = await Replica(etcd, prefix, "ctl-b").start()
        try:
            first = await a.membership.node_connected("node-1")
            second = await a.membership.node_connected("node-1")
            assert first.value != second.value
            await a.membership.node_disconnected(first)
            assert await a.store.live_nodes() == {"node-1": second.value}
            await a.membership.node_disconnected(first)  # twice: ignored
            assert await a.store.live_nodes() == {"node-1": second.value}
            await a.membership.node_disconnected(second)
            assert await a.store.live_nodes() == {}

            # The race of a reconnect: the first stream's cleanup is decided, its delete still in
            # flight, while the next stream writes the key; whichever lands first, the key stays.
            first = await a.membership.node_connected("node-1")
            cleanup = asyncio.ensure_future(a.membership.node_disconnected(first))
            second = await a.membership.node_connected("node-1")
            await cleanup
            assert await a.store.live_nodes() == {"node-1": second.value}
            third = await a.membership.node_connected("node-1")
            await a.membership.node_disconnected(third)  # the newest ends first, the older stays
            assert "node-1" in await a.store.live_nodes()
            await a.membership.node_disconnected(second)
            assert await a.store.live_nodes() == {}

            # The node moved to b while a's stream lingered: a's end leaves b's key.
            on_a = await a.membership.node_connected("node-2")
            on_b = await b.membership.node_connected("node-2")
            await a.membership.node_disconnected(on_a)
            assert await a.store.live_nodes() == {"node-2": on_b.value}
            await b.membership.node_disconnected(on_b)
        finally:
            await b.stop()
            await a.stop()

    _run(etcd, body)


def test_the_election_moves_when_the_leaders_lease_expires(etcd: EmbeddedEtcd) -> None:
    """A leader that stops refreshing its lease (hung, partitioned, killed) loses the duties to
    the other replica within about one TTL."""

    async def body(prefix: str) -> None:
        a = await Replica(etcd, prefix, "ctl-a").start()
        await _until(lambda: _true(a.membership.is_leader), "a to lead")
        b = await Replica(etcd, prefix, "ctl-b").start()
        try:
            for task in a.membership._tasks:  # a freezes: no keepalive, no resign
                task.cancel()
            started = asyncio.get_running_loop().time()
            await _until(lambda: _true(b.membership.is_leader), "b to lead", within=TTL_S * 4)
            took = asyncio.get_running_loop().time() - started
            assert took <= TTL_S + 2, f"took {took:.1f}s"
        finally:
            await b.stop()
            await a.stop()

    _run(etcd, body)


# -- the etcd client ---------------------------------------------------------------------------
def test_several_endpoints_make_one_target() -> None:
    """One endpoint dials as given; several become one ipv4:/ipv6: target of resolved addresses."""
    assert channel_target([("127.0.0.1", 2379)]) == "127.0.0.1:2379"
    assert channel_target([("::1", 2379)]) == "[::1]:2379"
    assert channel_target([("127.0.0.1", 1), ("127.0.0.2", 2)]) == "ipv4:127.0.0.1:1,127.0.0.2:2"
    assert channel_target([("::1", 1), ("127.0.0.1", 2)]) == "ipv6:[::1]:1,[::ffff:7f00:1]:2"
    assert channel_target([("localhost", 1), ("127.0.0.1", 2)]).startswith(("ipv4:", "ipv6:"))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"etcd_endpoints": ["127.0.0.1"]}, "--etcd-endpoints: '127.0.0.1' is not HOST:PORT"),
        ({"etcd_endpoints": ["ftp://h:1"]}, "--etcd-endpoints: 'ftp://h:1': only http:// and https://"),
        ({"etcd_endpoints": ["http://h:1", "https://h:2"]}, "--etcd-endpoints: mixes http:// and https://"),
        ({"etcd_endpoints": ["h:1"], "etcd_cert": Path("/c")}, "--etcd-cert and --etcd-key go together"),
        ({"etcd_endpoints": ["h:1"], "etcd_ca": Path("/nonexistent")}, "--etcd-ca: /nonexistent is not"),
        ({"etcd_endpoints": ["http://h:1"], "etcd_ca": Path("/etc/hostname")}, "use https://"),
        ({"etcd_endpoints": ["h:1"], "etcd_user": "root"}, "--etcd-user needs a password"),
        ({"etcd_endpoints": ["h:1"], "etcd_password": "pw"}, "without --etcd-user"),
        (
            {"etcd_endpoints": ["h:1"], "etcd_user": "u", "etcd_password_file": Path("/nonexistent")},
            "--etcd-password-file: /nonexistent",
        ),
        ({"etcd_user": "root"}, "--etcd-user needs --etcd-endpoints"),
        ({"lease_ttl": 1}, "--lease-ttl must be at least 2 seconds"),
        ({"retention_max_alerts": 0}, "--retention-max-alerts must be at least 1"),
        ({"retention_closed_age_s": 0}, "--retention-closed-age must be positive"),
    ],
)
def test_unusable_etcd_and_replica_settings_name_their_flag(
    settings: dict[str, object], message: str
) -> None:
    config = ControllerConfig(plaintext=True, **settings)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        config.validate()


def test_the_password_never_shows_in_the_settings_or_the_client() -> None:
    config = ControllerConfig(
        plaintext=True, etcd_endpoints=["h:1"], etcd_user="u", etcd_password="s3cr3t-pw"
    )
    settings = config.etcd_settings()
    client = EtcdClient(settings)
    for text in (repr(config), repr(settings), repr(client), settings.describe()):
        assert "s3cr3t-pw" not in text


def test_the_client_speaks_tls_to_an_etcd_that_requires_client_certificates(tmp_path: Path) -> None:
    """https:// with --etcd-ca, --etcd-cert and --etcd-key works; without a client certificate etcd
    refuses the connection."""
    tls = make_tls(tmp_path / "pki")
    with EtcdCluster(tmp_path / "etcd", size=1, tls=tls) as cluster:

        async def body() -> None:
            config = ControllerConfig(
                plaintext=True,
                etcd_endpoints=cluster.endpoints,
                etcd_ca=tls.ca,
                etcd_cert=tls.client_cert,
                etcd_key=tls.client_key,
            )
            async with EtcdClient(config.etcd_settings()) as client:
                await client.put(b"/tls/key", b"value")
                got = await client.get(b"/tls/key")
                assert got is not None
                assert got.value == b"value"
            anonymous = EtcdClient(EtcdSettings(tuple(cluster.endpoints), ca=tls.ca))
            try:
                with pytest.raises(aetcd.ClientError):
                    await asyncio.wait_for(anonymous.get(b"/tls/key"), 10)
            finally:
                await anonymous.close()

        asyncio.run(body())


def test_the_client_authenticates_as_the_configured_user(tmp_path: Path) -> None:
    """With etcd auth enabled, --etcd-user and the password file work, including watches and after
    the auth token expired; a wrong password is refused naming --etcd-user, not the password."""
    with EtcdCluster(tmp_path / "etcd", size=1, extra_args=["--auth-token-ttl", "1"]) as cluster:
        cluster.etcdctl("user", "add", "root", "--new-user-password", "rootpw")
        cluster.etcdctl("user", "add", "telltale", "--new-user-password", "ttpw")
        cluster.etcdctl("role", "add", "telltale")
        cluster.etcdctl("role", "grant-permission", "telltale", "--prefix=true", "readwrite", "/telltale/")
        cluster.etcdctl("user", "grant-role", "telltale", "telltale")
        cluster.etcdctl("auth", "enable")
        password_file = tmp_path / "password"
        password_file.write_text("ttpw\n")

        async def body() -> None:
            config = ControllerConfig(
                plaintext=True,
                etcd_endpoints=cluster.endpoints,
                etcd_user="telltale",
                etcd_password_file=password_file,
            )
            async with EtcdClient(config.etcd_settings()) as client:
                watch = await client.watch(b"/telltale/k")
                await client.put(b"/telltale/k", b"v")
                async with asyncio.timeout(10):
                    async for event in watch:
                        assert event.kv.value == b"v"
                        break
                await watch.cancel()
                with pytest.raises(aetcd.ClientError):
                    await client.put(b"/elsewhere", b"v")  # the role covers /telltale/ only
                await asyncio.sleep(2.5)  # idle longer than --auth-token-ttl: the token expires
                lease = await client.lease(5)
                await client.put(b"/telltale/k", b"again", lease=lease.id)
                assert (await lease.refresh()) is not None
            wrong = ControllerConfig(
                plaintext=True, etcd_endpoints=cluster.endpoints, etcd_user="telltale", etcd_password="nope"
            )
            client = EtcdClient(wrong.etcd_settings())
            with pytest.raises(EtcdAuthError) as refused:
                await client.connect()
            assert "telltale" in str(refused.value)
            assert "nope" not in str(refused.value)

        asyncio.run(body())


def test_a_leader_whose_keepalives_fail_stops_its_duties_before_the_lease_can_lapse(
    etcd: EmbeddedEtcd,
) -> None:
    """When lease refreshes hang, the leader stops running the duties once none has succeeded for
    TTL x 2/3, before etcd could expire the lease and another replica lead."""

    async def body(prefix: str) -> None:
        a = await Replica(etcd, prefix, "ctl-a").start()
        try:
            await _until(lambda: _true(a.membership.is_leader), "a to lead")
            refreshed = a.membership._last_refresh
            await _until(lambda: _true(a.membership._last_refresh != refreshed), "a refresh")

            async def hang(lease_id: int) -> None:
                await asyncio.Event().wait()

            a.client.refresh_lease = hang  # type: ignore[method-assign]
            last_success = a.membership._last_refresh
            await _until(lambda: _true(not a.membership.is_leader), "a to stop leading", within=TTL_S * 2)
            stopped_after = asyncio.get_running_loop().time() - last_success
            assert stopped_after < TTL_S * 2 / 3 + 0.3
        finally:
            await a.stop()

    _run(etcd, body)


def test_a_keepalive_without_an_answer_is_a_failed_refresh_not_an_expired_lease(etcd: EmbeddedEtcd) -> None:
    """refresh_lease answering None (no keepalive response) does not make the replica drop a lease
    that still holds its keys: it keeps the lease and refreshes it again."""

    async def body(prefix: str) -> None:
        a = await Replica(etcd, prefix, "ctl-a").start()
        try:
            await _until(lambda: _true(a.membership.is_leader), "a to lead")
            lease = a.membership.lease_id
            real = a.client.refresh_lease
            answers: list[object] = []

            async def once_none(lease_id: int) -> object:
                if not answers:
                    answers.append(None)
                    return None
                reply = await real(lease_id)
                answers.append(reply)
                return reply

            a.client.refresh_lease = once_none  # type: ignore[method-assign]
            await _until(lambda: _true(len(answers) >= 3), "three keepalives", within=TTL_S * 3)
            assert a.membership.lease_id == lease
            await _until(lambda: _true(a.membership.is_leader), "a to lead on the same lease")
            assert await a.client.get(f"{prefix}election/leader".encode()) is not None
        finally:
            await a.stop()

    _run(etcd, body)


def test_the_tls_client_checks_each_member_by_its_own_name_and_fails_over(tmp_path: Path) -> None:
    """Three TLS members, each with a certificate naming only its own address, given as
    https://127.0.0.<i>:port endpoints: puts succeed; when the member in use is killed, the client
    moves to another and puts (and a lease keepalive) go on succeeding. A request in flight on the
    dead connection (or at etcd while it elects a new leader) may fail once: callers retry."""
    tls = make_tls(tmp_path / "pki", members=3)
    with EtcdCluster(tmp_path / "etcd", size=3, tls=tls) as cluster:

        async def body() -> None:
            settings = EtcdSettings(
                tuple(cluster.endpoints), ca=tls.ca, cert=tls.client_cert, key=tls.client_key
            )
            async with EtcdClient(settings) as client:  # 10 s: above etcd's request timeout (7 s)
                lease = await client.lease(10)
                for i in range(3):
                    await client.put(b"/failover/k", str(i).encode())
                in_use = client.endpoint
                cluster.kill(next(i for i, m in enumerate(cluster.members) if m.endpoint == in_use))
                failures = []
                for i in range(5):
                    for _attempt in range(3):
                        try:
                            await client.put(b"/failover/k", f"after-{i}".encode())
                            break
                        except aetcd.ClientError as exc:
                            failures.append(exc)
                    else:
                        raise AssertionError(f"put {i} failed three times: {failures}")
                assert len(failures) <= 2, failures
                assert client.endpoint != in_use
                got = await client.get(b"/failover/k")
                assert got is not None
                assert got.value == b"after-4"
                assert (await client.refresh_lease(lease.id)).TTL > 0

        asyncio.run(body())
