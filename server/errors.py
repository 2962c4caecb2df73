"""The error hierarchy of the ledger, and its one mapping to ``google.rpc.Status``.

``LedgerError`` carries a gRPC status code, a stable UPPER_SNAKE reason (the ``ErrorInfo``
reason, domain ``creditwallet``) and string metadata. Subclasses exist only where a caller
needs a distinct type; everything else is a ``LedgerError`` with a reason.

``stored``: whether the refusal depends on ledger state and must be remembered under the
request_id (docs/design.md, idempotency). Malformed requests (INVALID_ARGUMENT) are never
stored, so a caller who fixes the request may retry with the same key.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

DOMAIN = "creditwallet"


class LedgerError(Exception):
    """A refusal the caller caused or can act on; never a bug."""

    def __init__(
        self,
        code: grpc.StatusCode,
        reason: str,
        message: str,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})

    @property
    def stored(self) -> bool:
        return self.code not in (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.UNAUTHENTICATED,
            grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.INTERNAL,
        )

    def to_status(self) -> status_pb2.Status:
        info = error_details_pb2.ErrorInfo(
            reason=self.reason, domain=DOMAIN, metadata=self.metadata
        )
        detail = any_pb2.Any()
        detail.Pack(info)
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=[detail])


def invalid(field: str, message: str) -> LedgerError:
    return LedgerError(
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", message, {"field": field}
    )


def not_found(reason: str, message: str, **metadata: str) -> LedgerError:
    return LedgerError(grpc.StatusCode.NOT_FOUND, reason, message, metadata)


def precondition(reason: str, message: str, **metadata: str) -> LedgerError:
    return LedgerError(grpc.StatusCode.FAILED_PRECONDITION, reason, message, metadata)


def insufficient_credits(available_micros: int, required_micros: int) -> LedgerError:
    return precondition(
        "INSUFFICIENT_CREDITS",
        f"{required_micros} micros required, {available_micros} available",
        available_micros=str(available_micros),
        required_micros=str(required_micros),
    )


def request_id_reused(request_id: str) -> LedgerError:
    return LedgerError(
        grpc.StatusCode.ALREADY_EXISTS,
        "REQUEST_ID_REUSED",
        "request_id was already used with different parameters",
        {"request_id": request_id},
    )


def unavailable(
    message: str = "database unavailable; retry with the same request_id",
) -> LedgerError:
    return LedgerError(grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE", message)


def internal() -> LedgerError:
    return LedgerError(grpc.StatusCode.INTERNAL, "INTERNAL", "internal error")


def unauthenticated() -> LedgerError:
    return LedgerError(
        grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED", "missing or invalid bearer token"
    )


def permission_denied(scope: str) -> LedgerError:
    return LedgerError(
        grpc.StatusCode.PERMISSION_DENIED,
        "PERMISSION_DENIED",
        f"token lacks the {scope} scope",
        {"scope": scope},
    )
