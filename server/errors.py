"""The ledger's refusals: one exception type, with a reason from the catalogue.

``LedgerError`` carries a reason of ``creditwallet.core.reasons`` (which fixes its gRPC code
and whether it is stored under the request_id), a message for people and string metadata.
The ledger raises it and never speaks gRPC: the RPC layer (``server/status.py``) turns it
into a ``google.rpc.Status``. Anything else raised is a bug, which the gate logs and answers
with a bare INTERNAL.
"""

from __future__ import annotations

from collections.abc import Mapping

from creditwallet.core import reasons


class LedgerError(Exception):
    """A refusal the caller caused or can act on; never a bug."""

    def __init__(
        self, reason: str, message: str, metadata: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        if reason not in reasons.BY_NAME:
            raise ValueError(f"{reason} is not in the reason catalogue")
        self.reason = reason
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})

    @property
    def code(self) -> str:
        """The gRPC status code's name."""
        return reasons.BY_NAME[self.reason].code

    @property
    def stored(self) -> bool:
        """Whether the refusal is recorded under the request_id (it depends on state)."""
        return reasons.BY_NAME[self.reason].stored


def invalid(field: str, message: str) -> LedgerError:
    return LedgerError("INVALID_ARGUMENT", message, {"field": field})


def not_found(reason: str, message: str, **metadata: str) -> LedgerError:
    return _of_code(reasons.NOT_FOUND, reason, message, metadata)


def precondition(reason: str, message: str, **metadata: str) -> LedgerError:
    return _of_code(reasons.FAILED_PRECONDITION, reason, message, metadata)


def _of_code(code: str, reason: str, message: str, metadata: Mapping[str, str]) -> LedgerError:
    error = LedgerError(reason, message, metadata)
    if error.code != code:
        raise ValueError(f"{reason} is a {error.code} reason, not {code}")
    return error


def insufficient_credits(available_micros: int, required_micros: int, **extra: str) -> LedgerError:
    return precondition(
        "INSUFFICIENT_CREDITS",
        f"{required_micros} micros required, {available_micros} available",
        available_micros=str(available_micros),
        required_micros=str(required_micros),
        **extra,
    )


def request_id_reused(request_id: str) -> LedgerError:
    return LedgerError(
        "REQUEST_ID_REUSED",
        "request_id was already used with different parameters",
        {"request_id": request_id},
    )


def unavailable(
    message: str = "database unavailable; retry with the same request_id",
) -> LedgerError:
    return LedgerError("DATABASE_UNAVAILABLE", message)


def message_too_large(size: int, size_max: int) -> LedgerError:
    return LedgerError(
        "MESSAGE_TOO_LARGE",
        f"the request message is {size} bytes; this method takes at most {size_max}",
        {"size_bytes": str(size), "size_bytes_max": str(size_max)},
    )


def internal() -> LedgerError:
    return LedgerError("INTERNAL", "internal error")


def unauthenticated() -> LedgerError:
    return LedgerError("UNAUTHENTICATED", "missing or invalid bearer token")


def permission_denied(scope: str) -> LedgerError:
    return LedgerError("PERMISSION_DENIED", f"token lacks the {scope} scope", {"scope": scope})
