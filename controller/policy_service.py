"""PolicyService: policies as documents, validated by the engine, kept in etcd.

Built-in policies are read-only. Operations that belong to the policy-management milestone
(clone, delete, default, assignments, history) answer UNIMPLEMENTED until it lands.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from telltale.controller.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unimplemented,
)
from telltale.controller.rpc import require, unary
from telltale.controller.store import Conflict, Store
from telltale.engine import policy as policy_model
from telltale.v1 import policy_pb2, policy_pb2_grpc

_NOT_YET = "clone, delete, default, assignments and history are not served by this release yet"


def _violations_error(error: policy_model.PolicyValidationError) -> InvalidArgument:
    if len(error.violations) == 1:
        only = error.violations[0]
        return InvalidArgument(only.field, only.description)
    return InvalidArgument("document", "; ".join(f"{v.field}: {v.description}" for v in error.violations))


# A policy and its history entry are written in one etcd request, which etcd caps at 1.5 MiB.
MAX_POLICY_BYTES = 512 * 1024


def _checked_size(message: policy_pb2.Policy) -> policy_pb2.Policy:
    size = message.ByteSize()
    if size > MAX_POLICY_BYTES:
        raise InvalidArgument("policy", f"is {size} bytes once encoded; the limit is {MAX_POLICY_BYTES}")
    return message


def _parse(policy: policy_pb2.Policy, document: str) -> policy_model.Policy:
    """The engine's Policy from a request's document (preferred) or message; InvalidArgument if invalid."""
    try:
        if document.strip():
            return policy_model.parse_document(document)
        return policy_model.from_proto(policy)
    except policy_model.PolicyValidationError as exc:
        raise _violations_error(exc) from exc


class PolicyService(policy_pb2_grpc.PolicyServiceServicer):
    """Serves policies from the store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    @unary
    async def ListPolicies(
        self, request: policy_pb2.ListPoliciesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> policy_pb2.ListPoliciesResponse:
        state = await self._store.policy_state()
        return policy_pb2.ListPoliciesResponse(
            policies=[state.policies[name] for name in sorted(state.policies, key=str.lower)],
            default_policy=state.default_policy,
        )

    @unary
    async def GetPolicy(
        self, request: policy_pb2.GetPolicyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> policy_pb2.GetPolicyResponse:
        name = require(request.name, "name")
        stored = await self._store.get_policy(name)
        if stored is None:
            raise NotFound(f"no policy named {name!r}")
        if request.revision and request.revision != stored.value.revision:
            raise Unimplemented("past revisions of a policy are not served by this release yet")
        policy = stored.value
        return policy_pb2.GetPolicyResponse(
            policy=policy, document=policy_model.to_document(policy_model.from_proto(policy))
        )

    @unary
    async def CreatePolicy(
        self, request: policy_pb2.CreatePolicyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> policy_pb2.CreatePolicyResponse:
        model = _parse(request.policy, request.document)
        message = _checked_size(_stamped(policy_model.to_proto(model), revision=1, actor=str(context.peer())))
        message.builtin = False
        try:
            await self._store.create_policy(message)
        except Conflict as exc:
            raise AlreadyExists(str(exc)) from exc
        return policy_pb2.CreatePolicyResponse(policy=message)

    @unary
    async def UpdatePolicy(
        self, request: policy_pb2.UpdatePolicyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> policy_pb2.UpdatePolicyResponse:
        model = _parse(request.policy, request.document)
        stored = await self._store.get_policy(model.name)
        if stored is None:
            raise NotFound(f"no policy named {model.name!r}")
        if stored.value.builtin:
            raise FailedPrecondition(f"policy {model.name!r} is built in and read-only: clone it to edit")
        expected = request.expected_revision or request.policy.revision
        if not expected:
            raise InvalidArgument("expected_revision", "name the revision you edited")
        if expected != stored.value.revision:
            raise FailedPrecondition(
                f"policy {model.name!r} is at revision {stored.value.revision}, not {expected}: "
                "read it again and reapply your change"
            )
        message = _checked_size(
            _stamped(policy_model.to_proto(model), revision=expected + 1, actor=str(context.peer()))
        )
        message.cloned_from = stored.value.cloned_from
        try:
            await self._store.update_policy(message, stored.mod_revision)
        except Conflict as exc:
            raise FailedPrecondition(str(exc)) from exc
        return policy_pb2.UpdatePolicyResponse(policy=message)

    @unary
    async def ValidatePolicy(
        self, request: policy_pb2.ValidatePolicyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> policy_pb2.ValidatePolicyResponse:
        try:
            policy_model.parse_document(require(request.document, "document"))
        except policy_model.PolicyValidationError as exc:
            return policy_pb2.ValidatePolicyResponse(
                violations=[
                    policy_pb2.FieldViolation(field=v.field, description=v.description)
                    for v in exc.violations
                ]
            )
        return policy_pb2.ValidatePolicyResponse()

    @unary
    async def ClonePolicy(
        self, request: policy_pb2.ClonePolicyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> policy_pb2.ClonePolicyResponse:
        raise Unimplemented(_NOT_YET)

    @unary
    async def DeletePolicy(
        self, request: policy_pb2.DeletePolicyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> policy_pb2.DeletePolicyResponse:
        raise Unimplemented(_NOT_YET)

    @unary
    async def SetDefaultPolicy(
        self, request: policy_pb2.SetDefaultPolicyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> policy_pb2.SetDefaultPolicyResponse:
        raise Unimplemented(_NOT_YET)

    @unary
    async def AssignPolicy(
        self, request: policy_pb2.AssignPolicyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> policy_pb2.AssignPolicyResponse:
        raise Unimplemented(_NOT_YET)

    @unary
    async def UnassignPolicy(
        self, request: policy_pb2.UnassignPolicyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> policy_pb2.UnassignPolicyResponse:
        raise Unimplemented(_NOT_YET)

    @unary
    async def ListAssignments(
        self, request: policy_pb2.ListAssignmentsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> policy_pb2.ListAssignmentsResponse:
        raise Unimplemented(_NOT_YET)

    @unary
    async def ListPolicyRevisions(
        self, request: policy_pb2.ListPolicyRevisionsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> policy_pb2.ListPolicyRevisionsResponse:
        raise Unimplemented(_NOT_YET)


def _stamped(message: policy_pb2.Policy, *, revision: int, actor: str) -> policy_pb2.Policy:
    message.revision = revision
    message.updated_by = actor
    ts = Timestamp()
    ts.GetCurrentTime()
    message.updated_at.CopyFrom(ts)
    return message
