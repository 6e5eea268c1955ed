"""Gateway errors and the one table that maps them to gRPC status codes and HTTP codes.

Adapters never pick a status themselves: they raise or receive a GatewayError and
ask this table. HTTP codes follow Triton's mapping (INTERNAL 500, NOT_FOUND 404,
UNAVAILABLE 503, UNIMPLEMENTED 501), with OVMS's 412 for a model that failed to
reshape or compile.
"""

from __future__ import annotations

import enum

import grpc


class Code(enum.Enum):
    INVALID_ARGUMENT = (grpc.StatusCode.INVALID_ARGUMENT, 400)
    NOT_FOUND = (grpc.StatusCode.NOT_FOUND, 404)
    UNAVAILABLE = (grpc.StatusCode.UNAVAILABLE, 503)
    FAILED_PRECONDITION = (grpc.StatusCode.FAILED_PRECONDITION, 412)
    RESOURCE_EXHAUSTED = (grpc.StatusCode.RESOURCE_EXHAUSTED, 503)
    TOO_LARGE = (grpc.StatusCode.RESOURCE_EXHAUSTED, 413)  # a body over the size limit
    UNSUPPORTED_MEDIA_TYPE = (grpc.StatusCode.INVALID_ARGUMENT, 415)  # e.g. a Content-Encoding not undone
    PERMISSION_DENIED = (grpc.StatusCode.PERMISSION_DENIED, 403)  # a restricted API without its key
    DEADLINE_EXCEEDED = (grpc.StatusCode.DEADLINE_EXCEEDED, 504)
    UNIMPLEMENTED = (grpc.StatusCode.UNIMPLEMENTED, 501)
    ALREADY_EXISTS = (grpc.StatusCode.ALREADY_EXISTS, 400)  # Triton's HTTP code for it
    INTERNAL = (grpc.StatusCode.INTERNAL, 500)

    @property
    def grpc_status(self) -> grpc.StatusCode:
        return self.value[0]

    @property
    def http_status(self) -> int:
        return self.value[1]


class GatewayError(Exception):
    """An error a client is meant to see: a code from the table and a message that names what was wrong."""

    code = Code.INTERNAL

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidArgument(GatewayError):
    code = Code.INVALID_ARGUMENT


class NotFound(GatewayError):
    code = Code.NOT_FOUND


class Unavailable(GatewayError):
    code = Code.UNAVAILABLE


class FailedPrecondition(GatewayError):
    code = Code.FAILED_PRECONDITION


class ResourceExhausted(GatewayError):
    code = Code.RESOURCE_EXHAUSTED


class TooLarge(GatewayError):
    code = Code.TOO_LARGE


class UnsupportedMediaType(GatewayError):
    code = Code.UNSUPPORTED_MEDIA_TYPE


class PermissionDenied(GatewayError):
    code = Code.PERMISSION_DENIED


class DeadlineExceeded(GatewayError):
    code = Code.DEADLINE_EXCEEDED


class InternalError(GatewayError):
    code = Code.INTERNAL


class AlreadyExists(GatewayError):
    code = Code.ALREADY_EXISTS


class Unimplemented(GatewayError):
    code = Code.UNIMPLEMENTED


class ConfigError(Exception):
    """A configuration that cannot be served; raised at start-up, never sent to a client."""
