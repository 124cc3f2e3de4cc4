"""PolicyService: policies as documents, validated by the engine, kept in etcd.

Built-in policies are read-only: they are edited by cloning them. A policy cannot be deleted
while it is the default or assigned; the check and the delete are one compare-and-swap on the
policy-state revision, so an assignment made meanwhile makes the delete look again.

A deleted policy is gone from listings and from GetPolicy without a revision, but its history
still answers ListPolicyRevisions and GetPolicy with a revision, until a policy of the same name
is created again (which starts a new history at revision 1).

TestPolicy is a dry run on the events this replica received recently (see recent.py): it judges
them by a candidate policy and by the policies in force, and reports the difference. It reads the
policy view and the window only and writes nothing.

Page tokens are opaque strings (URL-safe base64 of the position), each valid only for the
listing that issued it; any other token is INVALID_ARGUMENT naming page.page_token.
"""

from __future__ import annotations

import asyncio
import re
import time
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
from telltale.controller.policies import PolicyView
from telltale.controller.recent import RecentEvents, dry_run
from telltale.controller.rpc import (
    MAX_DOCUMENT_BYTES,
    actor,
    check_length,
    check_names,
    decode_token,
    encode_token,
    page_size,
    paged,
    require,
    unary,
)
from telltale.controller.store import Absent, Conflict, PolicyState, Store
from telltale.engine import policy as policy_model
from telltale.v1 import policy_pb2, policy_pb2_grpc

# A delete re-reads and re-checks the state when a concurrent change beat it; after this many
# rounds the caller is told to retry (ABORTED).
DELETE_ATTEMPTS = 5
# How many users of a policy a refused delete names before it summarises the rest.
NAMED_USERS = 10
# Application and component names, as `telltale run` accepts them.
_APP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


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


def _app_name(value: str, field: str, *, required: bool) -> str:
    if not value:
        if required:
            raise InvalidArgument(field, "is required")
        return value
    if not _APP_NAME.fullmatch(value):
        raise InvalidArgument(
            field, f"{value!r}: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return value


def _in_use(state: PolicyState, name: str) -> str:
    """Why a policy cannot be deleted now and what to do about it; "" when nothing holds it."""
    reasons, remedies = [], []
    if state.default_policy == name:
        reasons.append("it is the default policy")
        remedies.append("make another policy the default")
    assigned = sorted(
        f"{app}/{comp}" if comp else app
        for (app, comp), policy in state.assignments.items()
        if policy == name
    )
    if assigned:
        shown = ", ".join(assigned[:NAMED_USERS])
        more = f" and {len(assigned) - NAMED_USERS} more" if len(assigned) > NAMED_USERS else ""
        reasons.append(f"it is assigned to {shown}{more}")
        remedies.append("unassign it")
    if not reasons:
        return ""
    return f"{'; '.join(reasons)}. First {' and '.join(remedies)}"


def _parse(policy: policy_pb2.Policy, document: str) -> policy_model.Policy:
    """The engine's Policy from a request's document (preferred) or message; InvalidArgument if invalid."""
    check_length(document, "document", max_bytes=MAX_DOCUMENT_BYTES)
    try:
        if document.strip():
            return policy_model.parse_document(document)
        return policy_model.from_proto(policy)
    except policy_model.PolicyValidationError as exc:
        raise _violations_error(exc) from exc


class PolicyService(policy_pb2_grpc.PolicyServiceServicer):
    """Serves policies from the store.

    TestPolicy needs the replica's policy view and its window of recent events; a service built
    without them answers it UNIMPLEMENTED.
    """

    def __init__(
        self, store: Store, policies: PolicyView | None = None, recent: RecentEvents | None = None
    ) -> None:
        self._store = store
        self._policies = policies
        self._recent = recent

    @unary
    async def ListPolicies(
        self, request: policy_pb2.ListPoliciesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> policy_pb2.ListPoliciesResponse:
        state = await self._store.policy_state()
        # Case-insensitive order; the name itself breaks ties, so each key is unique.
        policies, page = paged(
            "policies", request.page, state.policies.values(), lambda p: f"{p.name.lower()}\0{p.name}"
        )
        return policy_pb2.ListPoliciesResponse(
            policies=policies, default_policy=state.default_policy, page=page
        )

    @unary
    async def GetPolicy(
        self, request: policy_pb2.GetPolicyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> policy_pb2.GetPolicyResponse:
        name = require(request.name, "name")
        if request.revision < 0:
            raise InvalidArgument("revision", f"{request.revision} is negative; 0 asks for the current one")
        stored = await self._store.get_policy(name)
        if stored is not None and request.revision in (0, stored.value.revision):
            policy = stored.value
        elif request.revision == 0:
            raise NotFound(f"no policy named {name!r}")
        else:
            past = await self._store.get_policy_revision(name, request.revision)
            if past is None:
                raise NotFound(f"policy {name!r} has no revision {request.revision}")
            policy = past
        return policy_pb2.GetPolicyResponse(policy=policy, document=_document(policy))

    @unary
    async def CreatePolicy(
        self, request: policy_pb2.CreatePolicyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> policy_pb2.CreatePolicyResponse:
        model = _parse(request.policy, request.document)
        message = _checked_size(_stamped(policy_model.to_proto(model), revision=1, actor=actor(context)))
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
        if request.expected_revision < 0:
            raise InvalidArgument("expected_revision", f"{request.expected_revision} is negative")
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
            _stamped(policy_model.to_proto(model), revision=expected + 1, actor=actor(context))
        )
        message.cloned_from = stored.value.cloned_from
        message.builtin = False  # only the shipped policies are built in, whatever the request says
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
            model = policy_model.parse_document(
                require(request.document, "document", max_bytes=MAX_DOCUMENT_BYTES)
            )
        except policy_model.PolicyValidationError as exc:
            return policy_pb2.ValidatePolicyResponse(
                violations=[
                    policy_pb2.FieldViolation(field=v.field, description=v.description)
                    for v in exc.violations
                ]
            )
        try:  # what create and update would refuse, a valid document must not pass
            _checked_size(policy_model.to_proto(model))
        except InvalidArgument as exc:
            return policy_pb2.ValidatePolicyResponse(
                violations=[policy_pb2.FieldViolation(field=exc.field, description=exc.description)]
            )
        return policy_pb2.ValidatePolicyResponse()

    @unary
    async def TestPolicy(
        self, request: policy_pb2.TestPolicyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> policy_pb2.TestPolicyResponse:
        if self._policies is None or self._recent is None:
            raise Unimplemented("this server keeps no window of recent events to test policies on")
        try:
            candidate = policy_model.parse_document(
                require(request.document, "document", max_bytes=MAX_DOCUMENT_BYTES)
            )
        except policy_model.PolicyValidationError as exc:
            raise _violations_error(exc) from exc
        if request.since_seconds < 0:
            raise InvalidArgument(
                "since_seconds", f"{request.since_seconds} is negative; 0 means everything held"
            )
        check_names(request.applications, "applications")
        applications = frozenset(request.applications)
        now_ns = time.time_ns()
        self._recent.expire(now_ns)
        start_ns = now_ns - request.since_seconds * 1_000_000_000 if request.since_seconds else 0
        window = self._recent.since(start_ns)
        oldest = self._recent.oldest_ns
        # The engine is pure and the window a snapshot: judge it off the event loop.
        result = await asyncio.to_thread(
            dry_run, self._policies.policy_set, candidate, window, applications, now_ns
        )
        if start_ns:
            result.window_start.FromNanoseconds(start_ns)
        if oldest is not None:
            result.retained_since.FromNanoseconds(oldest)
        return result

    @unary
    async def ClonePolicy(
        self, request: policy_pb2.ClonePolicyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> policy_pb2.ClonePolicyResponse:
        source = require(request.source, "source")
        name = request.name
        if not name:
            raise InvalidArgument("name", "is required")
        if problem := policy_model.name_problem(name):
            raise InvalidArgument("name", problem)
        stored = await self._store.get_policy(source)
        if stored is None:
            raise NotFound(f"no policy named {source!r}")
        clone = policy_pb2.Policy()
        clone.CopyFrom(stored.value)
        clone.name = name
        clone.builtin = False
        clone.cloned_from = source
        try:
            policy_model.from_proto(clone)
        except policy_model.PolicyValidationError as exc:
            raise FailedPrecondition(f"policy {source!r} as stored is not valid any more: {exc}") from exc
        message = _checked_size(_stamped(clone, revision=1, actor=actor(context)))
        try:
            await self._store.create_policy(message)
        except Conflict as exc:
            raise AlreadyExists(str(exc)) from exc
        return policy_pb2.ClonePolicyResponse(policy=message)

    @unary
    async def DeletePolicy(
        self, request: policy_pb2.DeletePolicyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> policy_pb2.DeletePolicyResponse:
        name = require(request.name, "name")
        for _ in range(DELETE_ATTEMPTS):
            state = await self._store.policy_state()
            policy = state.policies.get(name)
            if policy is None:
                raise NotFound(f"no policy named {name!r}")
            if policy.builtin:
                raise FailedPrecondition(f"policy {name!r} is built in and cannot be deleted")
            if reasons := _in_use(state, name):
                raise FailedPrecondition(f"policy {name!r} is in use: {reasons}")
            try:
                await self._store.delete_policy(name, state.revision)
            except Absent as exc:
                raise NotFound(str(exc)) from exc
            except Conflict:
                continue  # the state changed since the read: check it again
            return policy_pb2.DeletePolicyResponse(deleted=True)
        raise Conflict(f"policy {name!r}: the policy state kept changing during the delete")

    @unary
    async def SetDefaultPolicy(
        self, request: policy_pb2.SetDefaultPolicyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> policy_pb2.SetDefaultPolicyResponse:
        name = require(request.name, "name")
        try:
            replaced = await self._store.set_default_policy(name)
        except Absent as exc:
            raise NotFound(str(exc)) from exc
        return policy_pb2.SetDefaultPolicyResponse(previous=replaced.previous)

    @unary
    async def AssignPolicy(
        self, request: policy_pb2.AssignPolicyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> policy_pb2.AssignPolicyResponse:
        assignment = request.assignment
        application = _app_name(assignment.application, "assignment.application", required=True)
        component = _app_name(assignment.component, "assignment.component", required=False)
        policy = require(assignment.policy, "assignment.policy")
        try:
            replaced = await self._store.assign_policy(application, component, policy)
        except Absent as exc:
            raise NotFound(f"assignment.policy: {exc}") from exc
        return policy_pb2.AssignPolicyResponse(previous_policy=replaced.previous)

    @unary
    async def UnassignPolicy(
        self, request: policy_pb2.UnassignPolicyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> policy_pb2.UnassignPolicyResponse:
        application = _app_name(request.application, "application", required=True)
        component = _app_name(request.component, "component", required=False)
        replaced = await self._store.unassign_policy(application, component)
        return policy_pb2.UnassignPolicyResponse(removed=replaced.revision > 0)

    @unary
    async def ListAssignments(
        self, request: policy_pb2.ListAssignmentsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> policy_pb2.ListAssignmentsResponse:
        state = await self._store.policy_state()
        wanted = check_length(request.policy, "policy")
        if wanted and wanted not in state.policies:
            raise NotFound(f"policy: no policy named {wanted!r}")
        assignments = [
            policy_pb2.PolicyAssignment(application=app, component=comp, policy=policy)
            for (app, comp), policy in state.assignments.items()
            if not wanted or policy == wanted
        ]
        # Application, then component ("" first); names hold no NUL, so each key is unique.
        page_items, page = paged(
            "assignments", request.page, assignments, lambda a: f"{a.application}\0{a.component}"
        )
        return policy_pb2.ListAssignmentsResponse(assignments=page_items, page=page)

    @unary
    async def ListPolicyRevisions(
        self, request: policy_pb2.ListPolicyRevisionsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> policy_pb2.ListPolicyRevisionsResponse:
        name = require(request.name, "name")
        before = 0
        if request.page.page_token:
            position = decode_token("revisions", request.page.page_token)
            if not position.isdigit() or int(position) < 1:
                raise InvalidArgument("page.page_token", f"{request.page.page_token!r} names no revision")
            before = int(position)
        size = page_size(request.page.page_size)
        history = await self._store.list_policy_revisions(name, before=before, limit=size + 1)
        if not history and not before:
            raise NotFound(f"no policy named {name!r} and no history of one")
        response = policy_pb2.ListPolicyRevisionsResponse(
            revisions=[
                policy_pb2.PolicyRevision(
                    revision=p.revision, updated_at=p.updated_at, updated_by=p.updated_by
                )
                for p in history[:size]
            ]
        )
        if len(history) > size:
            response.page.next_page_token = encode_token("revisions", str(history[size - 1].revision))
        return response


def _document(policy: policy_pb2.Policy) -> str:
    """The policy as a YAML document; "" when the engine no longer accepts what was stored (a
    revision written before an alert type or parameter it names was withdrawn)."""
    try:
        return policy_model.to_document(policy_model.from_proto(policy))
    except policy_model.PolicyValidationError:
        return ""


def _stamped(message: policy_pb2.Policy, *, revision: int, actor: str) -> policy_pb2.Policy:
    message.revision = revision
    message.updated_by = actor
    ts = Timestamp()
    ts.GetCurrentTime()
    message.updated_at.CopyFrom(ts)
    return message
