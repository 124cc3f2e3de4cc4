"""Domain errors of the controller and the one table that maps them to gRPC status codes."""

from __future__ import annotations

import grpc


class ControllerError(Exception):
    """Base of errors a request can end with; the message is shown to the caller."""


class InvalidArgument(ControllerError):
    """A request field is missing or wrong; `field` names it."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description


class NotFound(ControllerError):
    """The named object does not exist."""


class AlreadyExists(ControllerError):
    """An object with that name exists already."""


class FailedPrecondition(ControllerError):
    """The request conflicts with the current state (stale revision, object in use)."""


class Unimplemented(ControllerError):
    """The RPC is part of the API but this release does not serve it yet."""


class Unavailable(ControllerError):
    """The shared state cannot be reached right now; retry later."""


STATUS_CODES: dict[type[ControllerError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
}


def status_of(error: ControllerError) -> grpc.StatusCode:
    """The gRPC status code for a domain error (INTERNAL for an unmapped subclass)."""
    for cls in type(error).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return grpc.StatusCode.INTERNAL
