"""TokenService: create, list and revoke API tokens (admin only, see controller.auth)."""

from __future__ import annotations

import logging
import time
from typing import Any

import grpc

from telltale.controller import auth
from telltale.controller.errors import InvalidArgument, NotFound
from telltale.controller.rpc import paginate, require, unary
from telltale.controller.tokens import Role, TokenRecord, TokenStore, TokenVerifier, new_token
from telltale.v1 import token_pb2, token_pb2_grpc

log = logging.getLogger(__name__)

MAX_NAME = 128  # bytes of UTF-8: names are shown in logs and listings, one line each
MAX_DESCRIPTION = 1024
MIN_EXPIRY_S = 1
MAX_EXPIRY_S = 10 * 366 * 86400


def token_message(record: TokenRecord) -> token_pb2.Token:
    """The API view of a stored token (never its hash)."""
    message = token_pb2.Token(
        id=record.id,
        name=record.name,
        description=record.description,
        role=record.role,  # type: ignore[arg-type]
        creator=record.creator,
    )
    message.created_at.FromNanoseconds(record.created_ns)
    if record.expires_ns:
        message.expires_at.FromNanoseconds(record.expires_ns)
    return message


class TokenService(token_pb2_grpc.TokenServiceServicer):
    """Serves TokenService over a TokenStore; `verifier` forgets a token revoked here at once."""

    def __init__(self, store: TokenStore, verifier: TokenVerifier | None = None) -> None:
        self._store = store
        self._verifier = verifier

    @unary
    async def CreateToken(
        self, request: token_pb2.CreateTokenRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> token_pb2.CreateTokenResponse:
        if request.role not in (r.value for r in Role):
            raise InvalidArgument("role", "must be ROLE_VIEWER, ROLE_OPERATOR or ROLE_ADMIN")
        name = require(request.name, "name")
        if len(name.encode()) > MAX_NAME:
            raise InvalidArgument("name", f"is longer than {MAX_NAME} bytes (UTF-8)")
        if not name.isprintable():
            raise InvalidArgument("name", "must be printable characters only: no newline, tab or control")
        if len(request.description) > MAX_DESCRIPTION:
            raise InvalidArgument("description", f"is longer than {MAX_DESCRIPTION} characters")
        now_ns = time.time_ns()
        expires_ns = 0
        if request.HasField("expires_in"):
            seconds = request.expires_in.ToNanoseconds() / 1e9
            if not MIN_EXPIRY_S <= seconds <= MAX_EXPIRY_S:
                raise InvalidArgument(
                    "expires_in", f"must be between {MIN_EXPIRY_S}s and {MAX_EXPIRY_S // 86400} days"
                )
            expires_ns = now_ns + request.expires_in.ToNanoseconds()
        caller = auth.current_caller()
        token = new_token(
            Role(request.role),
            name,
            creator=str(caller) if caller else "unknown",
            description=request.description,
            expires_ns=expires_ns,
            now_ns=now_ns,
        )
        await self._store.put(token.record)
        log.info(
            "token %s (%s, role %s) created by %s",
            token.record.id,
            name,
            Role(request.role).label,
            token.record.creator,
            extra={"token_id": token.record.id},
        )
        return token_pb2.CreateTokenResponse(token=token_message(token.record), bearer_token=token.bearer)

    @unary
    async def ListTokens(
        self, request: token_pb2.ListTokensRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> token_pb2.ListTokensResponse:
        records, next_token = paginate(await self._store.list(), lambda r: r.id, request.page)
        response = token_pb2.ListTokensResponse(tokens=[token_message(r) for r in records])
        response.page.next_page_token = next_token
        return response

    @unary
    async def RevokeToken(
        self, request: token_pb2.RevokeTokenRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> token_pb2.RevokeTokenResponse:
        token_id = require(request.id, "id")
        removed = await self._store.delete(token_id)
        if removed is None:
            raise NotFound(f"no token with id {token_id!r}")
        if self._verifier is not None:
            self._verifier.forget(token_id)
        caller = auth.current_caller()
        log.info("token %s revoked by %s", token_id, caller, extra={"token_id": token_id})
        return token_pb2.RevokeTokenResponse(token=token_message(removed))
