"""Authorization in the controller: the role table, token verification, and the interceptor over an
in-process server (the TLS and process-level checks are in tests/test_tls_e2e.py and
tests/test_auth_matrix.py)."""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
import re
import stat
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aetcd
import grpc
import pytest

import telltale.v1
from telltale.controller import auth, tokens
from telltale.controller.auth import (
    NODE,
    OPEN,
    RULES,
    AuthInterceptor,
    Authorizer,
    Denied,
    bearer_token,
    rule_for,
)
from telltale.controller.catalog_service import CatalogService
from telltale.controller.etcd import EmbeddedEtcd
from telltale.controller.token_service import TokenService
from telltale.controller.tokens import (
    EtcdTokens,
    MemoryTokens,
    Role,
    TokenRecord,
    TokenVerifier,
    Verdict,
    bootstrap_admin,
    new_token,
    split_token,
)
from telltale.pki import Identity
from telltale.v1 import catalog_pb2, catalog_pb2_grpc, token_pb2, token_pb2_grpc


def every_rpc() -> set[str]:
    """Every RPC of every service of the generated telltale.v1 API, as "/pkg.Service/Method"."""
    methods = set()
    for info in pkgutil.iter_modules(telltale.v1.__path__):
        if not info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(f"telltale.v1.{info.name}")
        for service in module.DESCRIPTOR.services_by_name.values():
            methods |= {f"/{service.full_name}/{m.name}" for m in service.methods}
    return methods


def test_the_table_names_every_rpc_of_every_service_and_nothing_else() -> None:
    """A new RPC without a rule fails here (and is refused at run time: fail closed)."""
    assert set(RULES) == every_rpc()
    assert rule_for("/telltale.v1.PolicyService/NoSuchMethod") is None


def test_reads_are_viewer_triage_operator_writes_admin_and_the_agent_stream_node_only() -> None:
    """The shape of the table: every List/Get/Watch, ValidatePolicy and TestPolicy is viewer."""
    for method, rule in RULES.items():
        name = method.rpartition("/")[2]
        if method.startswith("/telltale.v1.AgentService/"):
            assert rule == NODE, method
        elif method.startswith("/telltale.v1.TokenService/"):
            assert rule == Role.ADMIN, method
        elif name.startswith(("List", "Get", "Watch")) or name in ("ValidatePolicy", "TestPolicy"):
            assert rule == Role.VIEWER, method
        elif name == "UpdateAlertState":
            assert rule == Role.OPERATOR
        else:
            assert rule == Role.ADMIN, method


def test_health_and_reflection_are_open() -> None:
    for method in (
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    ):
        assert rule_for(method) == OPEN


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ((), None),
        ((("authorization", "Bearer tt_x"),), "tt_x"),
        ((("Authorization", "bearer  tt_x "),), "tt_x"),
        ((("authorization", "Basic abc"),), ""),
        ((("authorization", "Bearer a"), ("authorization", "Bearer b")), ""),
        ((("other", "Bearer a"),), None),
    ],
)
def test_the_bearer_token_is_one_well_formed_authorization_value(
    metadata: tuple[tuple[str, str], ...], expected: str | None
) -> None:
    assert bearer_token(metadata) == expected


def test_a_token_is_an_id_and_a_32_byte_secret_of_which_only_a_hash_is_kept() -> None:
    token = new_token(Role.VIEWER, "v", creator="me", now_ns=1)
    parts = split_token(token.bearer)
    assert parts is not None
    token_id, secret = parts
    assert token_id == token.record.id
    assert secret not in token.record.to_json().decode()
    assert len(secret) == 43  # 32 bytes, URL-safe base64 without padding
    assert split_token(token.bearer + "x") is None
    assert split_token("tt_nothex00000_" + secret) is None


class Clock:
    def __init__(self) -> None:
        self.ns = 1_000 * 10**9
        self.mono = 0.0


def test_the_verifier_accepts_the_token_and_refuses_a_wrong_secret_an_unknown_id_and_expiry() -> None:
    async def body() -> None:
        store = MemoryTokens()
        clock = Clock()
        verifier = TokenVerifier(store, clock=lambda: clock.ns, monotonic=lambda: clock.mono)
        token = new_token(Role.OPERATOR, "op", creator="t", now_ns=clock.ns, expires_ns=clock.ns + 10**9)
        await store.put(token.record)
        assert await verifier.verify(token.bearer) == (Verdict.OK, token.record)
        forged = token.bearer[:-4] + ("AAAA" if not token.bearer.endswith("AAAA") else "BBBB")
        assert (await verifier.verify(forged))[0] == Verdict.UNKNOWN
        other = new_token(Role.ADMIN, "x", creator="t", now_ns=clock.ns)
        assert (await verifier.verify(other.bearer))[0] == Verdict.UNKNOWN
        assert (await verifier.verify("garbage"))[0] == Verdict.MALFORMED
        clock.ns += 10**9
        assert (await verifier.verify(token.bearer))[0] == Verdict.EXPIRED

    asyncio.run(body())


def test_a_revocation_elsewhere_is_seen_once_the_cache_entry_ages_out() -> None:
    """Another replica's delete is refused after the cache TTL (0.5 s); this replica's at once."""

    async def body() -> None:
        store = MemoryTokens()
        clock = Clock()
        verifier = TokenVerifier(store, clock=lambda: clock.ns, monotonic=lambda: clock.mono)
        token = new_token(Role.VIEWER, "v", creator="t", now_ns=clock.ns)
        await store.put(token.record)
        assert (await verifier.verify(token.bearer))[0] == Verdict.OK
        await store.delete(token.record.id)  # as another replica would
        assert (await verifier.verify(token.bearer))[0] == Verdict.OK  # cached
        clock.mono += 0.5
        assert (await verifier.verify(token.bearer))[0] == Verdict.UNKNOWN
        again = new_token(Role.VIEWER, "w", creator="t", now_ns=clock.ns)
        await store.put(again.record)
        assert (await verifier.verify(again.bearer))[0] == Verdict.OK
        await store.delete(again.record.id)
        verifier.forget(again.record.id)
        assert (await verifier.verify(again.bearer))[0] == Verdict.UNKNOWN

    asyncio.run(body())


def test_the_authorizer_decides_by_identity_token_and_role() -> None:
    """No credentials: UNAUTHENTICATED; a node only on the agent service; roles by the table."""

    async def body() -> None:
        store = MemoryTokens()
        viewer = new_token(Role.VIEWER, "v", creator="t", now_ns=1)
        await store.put(viewer.record)
        authorizer = Authorizer(TokenVerifier(store))
        node = Identity("node", "n1")
        connect = "/telltale.v1.AgentService/Connect"
        create = "/telltale.v1.PolicyService/CreatePolicy"
        listing = "/telltale.v1.PolicyService/ListPolicies"

        async def denied(method: str, peer: Identity | None, bearer: str | None) -> grpc.StatusCode:
            with pytest.raises(Denied) as info:
                await authorizer.authorize(method, rule_for(method), peer, bearer)
            return info.value.code

        assert (await authorizer.authorize(connect, NODE, node, None)).node_id == "n1"
        assert await denied(connect, None, None) == grpc.StatusCode.UNAUTHENTICATED
        assert await denied(connect, None, viewer.bearer) == grpc.StatusCode.PERMISSION_DENIED
        assert await denied(connect, Identity("client", "c"), None) == grpc.StatusCode.PERMISSION_DENIED
        assert await denied(listing, node, viewer.bearer) == grpc.StatusCode.PERMISSION_DENIED
        assert await denied(listing, None, None) == grpc.StatusCode.UNAUTHENTICATED
        assert await denied(listing, None, "tt_nope") == grpc.StatusCode.UNAUTHENTICATED
        caller = await authorizer.authorize(listing, Role.VIEWER, Identity("client", "c"), viewer.bearer)
        assert caller.role == Role.VIEWER
        assert await denied(create, None, viewer.bearer) == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(Denied, match="needs the admin role"):
            await authorizer.authorize(create, Role.ADMIN, None, viewer.bearer)
        assert await denied("/telltale.v1.PolicyService/Unknown", None, viewer.bearer) == (
            grpc.StatusCode.PERMISSION_DENIED
        )

    asyncio.run(body())


Serve = Callable[[grpc.aio.Channel], Awaitable[None]]


@asynccontextmanager
async def serving(authorizer: Authorizer | None, tokens: MemoryTokens) -> AsyncIterator[grpc.aio.Channel]:
    """Catalog and token services behind the interceptor, on an in-process insecure port."""
    server = grpc.aio.server(interceptors=[AuthInterceptor(authorizer)])
    catalog_pb2_grpc.add_CatalogServiceServicer_to_server(CatalogService(), server)
    verifier = authorizer.verifier if authorizer else None
    token_pb2_grpc.add_TokenServiceServicer_to_server(TokenService(tokens, verifier), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        await server.stop(None)


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


def test_the_interceptor_enforces_roles_and_records_the_caller_as_the_creator() -> None:
    """Over a real gRPC server: refused without a token or with too small a role; an admin's new
    token records who created it; a token revoked through this replica is refused at once."""

    async def body() -> None:
        tokens = MemoryTokens()
        admin = new_token(Role.ADMIN, "root", creator="test", now_ns=1)
        await tokens.put(admin.record)
        async with serving(Authorizer(TokenVerifier(tokens)), tokens) as channel:
            catalog = catalog_pb2_grpc.CatalogServiceStub(channel)
            stub = token_pb2_grpc.TokenServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await catalog.ListAlertTypes(catalog_pb2.ListAlertTypesRequest())
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            created = await stub.CreateToken(
                token_pb2.CreateTokenRequest(role=token_pb2.ROLE_VIEWER, name="console"),
                metadata=bearer(admin.bearer),
            )
            assert created.token.creator == f"token root (id {admin.record.id})"
            viewer = created.bearer_token
            assert (
                await catalog.ListAlertTypes(catalog_pb2.ListAlertTypesRequest(), metadata=bearer(viewer))
            ).alert_types
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ListTokens(token_pb2.ListTokensRequest(), metadata=bearer(viewer))
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "needs the admin role" in (info.value.details() or "")
            await stub.RevokeToken(
                token_pb2.RevokeTokenRequest(id=created.token.id), metadata=bearer(admin.bearer)
            )
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await catalog.ListAlertTypes(catalog_pb2.ListAlertTypesRequest(), metadata=bearer(viewer))
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED

    asyncio.run(body())


def test_with_auth_off_everyone_is_the_plaintext_admin() -> None:
    """Plaintext mode: no token needed, and the caller is named as such."""

    async def body() -> None:
        tokens = MemoryTokens()
        async with serving(None, tokens) as channel:
            created = await token_pb2_grpc.TokenServiceStub(channel).CreateToken(
                token_pb2.CreateTokenRequest(role=token_pb2.ROLE_ADMIN, name="a")
            )
        assert created.token.creator == str(auth.PLAINTEXT_CALLER)

    asyncio.run(body())


def test_create_token_validates_its_request() -> None:
    async def body() -> None:
        tokens = MemoryTokens()
        async with serving(None, tokens) as channel:
            stub = token_pb2_grpc.TokenServiceStub(channel)
            for request, field in (
                (token_pb2.CreateTokenRequest(name="x"), "role"),
                (token_pb2.CreateTokenRequest(role=token_pb2.ROLE_ADMIN), "name"),
                (token_pb2.CreateTokenRequest(role=token_pb2.ROLE_ADMIN, name="x" * 129), "name"),
                (token_pb2.CreateTokenRequest(role=token_pb2.ROLE_ADMIN, name="é" * 65), "name"),
                (token_pb2.CreateTokenRequest(role=token_pb2.ROLE_ADMIN, name="ops\nFAKE LOG LINE"), "name"),
                (token_pb2.CreateTokenRequest(role=token_pb2.ROLE_ADMIN, name="a\tb"), "name"),
                (token_pb2.CreateTokenRequest(role=token_pb2.ROLE_ADMIN, name="a\x1b[2Jb"), "name"),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.CreateToken(request)
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert (info.value.details() or "").startswith(field)
            request = token_pb2.CreateTokenRequest(role=token_pb2.ROLE_ADMIN, name="x")
            request.expires_in.FromSeconds(0)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.CreateToken(request)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.RevokeToken(token_pb2.RevokeTokenRequest(id="0123456789ab"))
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert await tokens.list() == []

    asyncio.run(body())


def test_bootstrap_writes_one_admin_token_privately_and_only_when_none_exists(tmp_path: Path) -> None:
    async def body() -> None:
        tokens = MemoryTokens()
        path = tmp_path / "secret" / "admin.token"
        record = await bootstrap_admin(tokens, path, now_ns=1)
        assert record is not None
        assert record.role == Role.ADMIN
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        verdict, found = await TokenVerifier(tokens).verify(path.read_text().strip())
        assert (verdict, found) == (Verdict.OK, record)
        assert await bootstrap_admin(tokens, tmp_path / "again", now_ns=2) is None
        assert not (tmp_path / "again").exists()

    asyncio.run(body())


def test_etcd_tokens_store_records_under_the_prefix(etcd: EmbeddedEtcd) -> None:
    """The etcd store keeps JSON records (a hash, never a secret) under <prefix>tokens/<id>."""

    async def body() -> None:
        host, port = etcd.endpoint.split(":")
        client = aetcd.Client(host=host, port=int(port), timeout=10)
        await client.connect()
        try:
            prefix = f"/test/{uuid.uuid4().hex}/"
            store = EtcdTokens(client, prefix)
            token = new_token(Role.VIEWER, "v", creator="t", now_ns=5)
            await store.put(token.record)
            assert await store.get(token.record.id) == token.record
            assert await store.list() == [token.record]
            raw = await client.get(f"{prefix}tokens/{token.record.id}".encode())
            assert raw is not None
            assert split_token(token.bearer)[1].encode() not in raw.value  # type: ignore[index]
            assert await store.get("../../x") is None
            assert await store.delete(token.record.id) == token.record
            assert await store.delete(token.record.id) is None
            assert await store.list() == []
        finally:
            await client.close()

    asyncio.run(body())


def test_the_security_doc_shows_the_same_table() -> None:
    """docs/security.md lists every rule of the table, and nothing else."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| `(\w+)` \| (\w+) \|$", doc, flags=re.MULTILINE)
    shown = {f"/telltale.v1.{service}/{method}": rule for service, method, rule in rows}
    assert shown == {method: auth.rule_label(rule) for method, rule in RULES.items()}


class CountingTokens(MemoryTokens):
    """MemoryTokens that counts lookups."""

    def __init__(self) -> None:
        super().__init__()
        self.gets = 0

    async def get(self, token_id: str) -> TokenRecord | None:
        self.gets += 1
        return await super().get(token_id)


def test_a_secret_that_cannot_be_a_token_is_refused_without_a_lookup() -> None:
    """A bearer of the right shape whose secret is not 32 bytes of canonical URL-safe base64 is
    malformed, and costs no store read."""

    async def body() -> None:
        store = CountingTokens()
        verifier = TokenVerifier(store)
        token = new_token(Role.VIEWER, "v", creator="t", now_ns=1)
        token_id, secret = split_token(token.bearer)  # type: ignore[misc]
        non_canonical = secret[:-1] + ("B" if secret[-1] != "B" else "C")  # low bits set: not 32 bytes
        for bearer in (f"tt_{token_id}_{non_canonical}", f"tt_{token_id}_{'-' * 42}_"):
            assert (await verifier.verify(bearer))[0] == Verdict.MALFORMED
        assert store.gets == 0

    asyncio.run(body())


def test_a_flood_of_unknown_ids_does_not_push_valid_tokens_out_of_the_cache() -> None:
    """20,000 made-up ids are remembered as unknown in their own bounded cache; a valid token
    stays cached (no new lookup) and the unknown ids' cache stays bounded."""

    async def body() -> None:
        store = CountingTokens()
        clock = Clock()
        verifier = TokenVerifier(store, clock=lambda: clock.ns, monotonic=lambda: clock.mono)
        token = new_token(Role.VIEWER, "v", creator="t", now_ns=clock.ns)
        await store.put(token.record)
        assert (await verifier.verify(token.bearer))[0] == Verdict.OK
        secret = split_token(token.bearer)[1]  # type: ignore[index]
        for i in range(20_000):
            assert (await verifier.verify(f"tt_{i:012x}_{secret}"))[0] == Verdict.UNKNOWN
        before = store.gets
        assert (await verifier.verify(token.bearer))[0] == Verdict.OK
        assert store.gets == before
        assert len(verifier._missing) <= tokens.MISSING_CACHE_SIZE
        assert (await verifier.verify(f"tt_{19_999:012x}_{secret}"))[0] == Verdict.UNKNOWN
        assert store.gets == before  # a recent unknown id is cached too

    asyncio.run(body())


def test_a_malformed_token_record_in_etcd_is_skipped_not_fatal(etcd: EmbeddedEtcd, tmp_path: Path) -> None:
    """Garbage under <prefix>tokens/ is logged and left out: listing, verifying and the bootstrap
    go on, and the malformed record can still be revoked."""

    async def body() -> None:
        host, port = etcd.endpoint.split(":")
        client = aetcd.Client(host=host, port=int(port), timeout=10)
        await client.connect()
        try:
            prefix = f"/test/{uuid.uuid4().hex}/"
            store = EtcdTokens(client, prefix)
            for token_id, raw in (
                ("00000000000a", b"not json"),
                ("00000000000b", b'{"id": "00000000000b"}'),
                ("00000000000c", b"[1, 2]"),
                ("00000000000d", b'{"id": "00000000000d", "name": 5, "role": "admin", "secret_sha256": ""}'),
                ("00000000000e", b"\xff\xfe"),
            ):
                await client.put(f"{prefix}tokens/{token_id}".encode(), raw)
            assert await store.list() == []
            assert await store.get("00000000000a") is None
            created = await bootstrap_admin(store, tmp_path / "admin.token", now_ns=1)
            assert created is not None
            assert await store.list() == [created]
            verifier = TokenVerifier(store)
            assert (await verifier.verify((tmp_path / "admin.token").read_text().strip()))[0] == Verdict.OK
            removed = await store.delete("00000000000a")
            assert removed is not None
            assert removed.id == "00000000000a"
        finally:
            await client.close()

    asyncio.run(body())
