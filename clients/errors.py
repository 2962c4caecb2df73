"""Typed exceptions for the credit-wallet API, built from the server's ``google.rpc.Status``.

The server aborts every failed RPC with a ``google.rpc.Status`` in the trailing metadata
(``grpc-status-details-bin``) holding one ``google.rpc.ErrorInfo``: domain ``creditwallet``, an
UPPER_SNAKE ``reason`` and string ``metadata``. ``from_rpc_error`` turns that into one class of
this hierarchy, chosen by reason first and by gRPC status code when the reason is unknown (or
absent, as when the transport itself failed):

    CreditWalletError(code, reason, message, metadata)   anything else (e.g. UNKNOWN, CANCELLED)
    ├── InvalidArgument          INVALID_ARGUMENT; ``field`` names the offending request field
    ├── NotFound                 NOT_FOUND
    │   ├── AccountNotFound          ACCOUNT_NOT_FOUND
    │   ├── AgentNotFound            AGENT_NOT_FOUND
    │   ├── HoldNotFound             HOLD_NOT_FOUND
    │   ├── TransactionNotFound      TRANSACTION_NOT_FOUND
    │   ├── ReferralCodeNotFound     REFERRAL_CODE_NOT_FOUND
    │   ├── EndpointNotFound         ENDPOINT_NOT_FOUND
    │   └── AutoRechargeAttemptNotFound  AUTO_RECHARGE_ATTEMPT_NOT_FOUND
    ├── FailedPrecondition       FAILED_PRECONDITION
    │   ├── InsufficientCredits      INSUFFICIENT_CREDITS; ints available_micros, required_micros
    │   ├── AgentDisabled            AGENT_DISABLED
    │   ├── HoldExpired              HOLD_EXPIRED
    │   ├── HoldFinalized            HOLD_FINALIZED
    │   ├── ReferralNotAllowed       REFERRAL_NOT_ALLOWED
    │   ├── AccountInDebt            ACCOUNT_IN_DEBT
    │   ├── ReversalExceedsDebit     REVERSAL_EXCEEDS_DEBIT; int reversible_micros
    │   ├── AutoRechargeNotConfigured, NoPaymentCustomer, NoDefaultPaymentMethod,
    │   └── PaymentProviderRefused   (auto-recharge: AUTO_RECHARGE_NOT_CONFIGURED, ...)
    ├── RequestIdReused          ALREADY_EXISTS / REQUEST_ID_REUSED
    ├── Unauthenticated          UNAUTHENTICATED
    ├── PermissionDenied         PERMISSION_DENIED
    ├── DeadlineExceeded         DEADLINE_EXCEEDED; the outcome is unknown: retry, same request_id
    ├── Unavailable              UNAVAILABLE / DATABASE_UNAVAILABLE; the only code clients retry
    │   └── PaymentProviderUnavailable  PAYMENT_PROVIDER_UNAVAILABLE
    ├── ResourceExhausted        RESOURCE_EXHAUSTED (gRPC's own refusal of a message too large)
    │   ├── MessageTooLarge          MESSAGE_TOO_LARGE; ints size_bytes, size_bytes_max
    │   └── TooManyStreams           TOO_MANY_STREAMS
    └── Internal                 INTERNAL

Why reasons over codes: a code says what kind of failure it is, the reason says which one, and
callers branch on the latter (top up on ``InsufficientCredits``, re-create on
``AccountNotFound``). Refusals that depend on ledger state are stored under the request_id by the
server, so retrying them with the same request_id returns the same refusal; only a new
request_id (after, say, a top-up) can change the outcome.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, cast

import grpc
from creditwallet.core import reasons
from creditwallet.v1 import wallet_service_pb2
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN: Final = reasons.DOMAIN


class CreditWalletError(Exception):
    """A failed RPC: the gRPC ``code``, the ErrorInfo ``reason``, a ``message`` and ``metadata``.

    ``reason`` is the status code's name when the server sent no ErrorInfo (e.g. a connection
    failure is ``UNAVAILABLE``), so ``reason`` is always set and always UPPER_SNAKE.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        reason: str,
        message: str,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})

    @property
    def retryable(self) -> bool:
        """Whether the same request (same request_id) may be sent again: UNAVAILABLE only."""
        return self.code == grpc.StatusCode.UNAVAILABLE

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code.name}, reason={self.reason!r}, "
            f"message={self.message!r}, metadata={self.metadata!r})"
        )


class InvalidArgument(CreditWalletError):
    """The request is malformed; ``field`` names the request field at fault, when known."""

    @property
    def field(self) -> str:
        return self.metadata.get("field", "")


class NotFound(CreditWalletError):
    """Something the request names does not exist."""


class AccountNotFound(NotFound):
    """No account for the user_id; ``EnsureAccount`` creates it."""


class AgentNotFound(NotFound):
    """No price for the agent_id."""


class HoldNotFound(NotFound):
    """No hold with the hold_id."""


class TransactionNotFound(NotFound):
    """No debit with the transaction_id for that user."""


class ReferralCodeNotFound(NotFound):
    """No referral code like the one given."""


class FailedPrecondition(CreditWalletError):
    """The request is well formed but the ledger's state refuses it."""


class InsufficientCredits(FailedPrecondition):
    """Not enough available credits; a retry needs a top-up and a new request_id.

    ``available_micros`` counts the lots that apply to the debit's agent, less the debt;
    ``overdraft_left_micros`` is what the account's overdraft limit still allows (0 without).
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        reason: str,
        message: str,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(code, reason, message, metadata)
        # int() of the server's decimal strings; ValueError here makes from_rpc_error fall
        # back to FailedPrecondition rather than invent figures.
        self.available_micros = int(self.metadata["available_micros"])
        self.required_micros = int(self.metadata["required_micros"])
        self.overdraft_left_micros = int(self.metadata.get("overdraft_left_micros", "0"))


class AgentDisabled(FailedPrecondition):
    """The agent's price is inactive."""


class HoldExpired(FailedPrecondition):
    """The hold's TTL passed before it was captured."""


class HoldFinalized(FailedPrecondition):
    """The hold was already captured or voided."""


class ReferralNotAllowed(FailedPrecondition):
    """Own code, second redemption, account too old or already paid, or referrer at its cap."""


class AccountInDebt(FailedPrecondition):
    """A refund left debt; debits are refused until grants pay it off."""


class ReversalExceedsDebit(FailedPrecondition):
    """More than what is left of the debit would be reversed."""

    def __init__(
        self,
        code: grpc.StatusCode,
        reason: str,
        message: str,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(code, reason, message, metadata)
        self.reversible_micros = int(self.metadata["reversible_micros"])


class MemberNotFound(NotFound):
    """No active member with that member_id in the account (unknown or set inactive)."""


class MemberCapExceeded(FailedPrecondition):
    """The member's spend in its current period (holds included) would pass its cap.

    ``spent_micros`` is what the period already counts, ``required_micros`` what the refused
    request needed, ``cap_micros`` the cap, ``period_end`` (RFC 3339) when the period ends.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        reason: str,
        message: str,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(code, reason, message, metadata)
        self.member_id = self.metadata["member_id"]
        self.spent_micros = int(self.metadata["spent_micros"])
        self.required_micros = int(self.metadata["required_micros"])
        self.cap_micros = int(self.metadata["cap_micros"])
        self.period_end = self.metadata["period_end"]


class EndpointNotFound(NotFound):
    """No configured webhook endpoint with that id."""


class AutoRechargeAttemptNotFound(NotFound):
    """No auto-recharge attempt with that id for that user."""


class AutoRechargeNotConfigured(FailedPrecondition):
    """The server has no payment provider key: auto-recharge cannot be enabled."""


class NoPaymentCustomer(FailedPrecondition):
    """The account has no payment customer yet (no purchase linked one)."""


class NoDefaultPaymentMethod(FailedPrecondition):
    """The account's payment customer has no default payment method."""


class PaymentProviderRefused(FailedPrecondition):
    """The payment provider refused the request."""


class ResourceExhausted(CreditWalletError):
    """The server would not take this much: a message too large, too many streams."""


class MessageTooLarge(ResourceExhausted):
    """The request message is larger than its method takes; split a batch."""

    def __init__(
        self,
        code: grpc.StatusCode,
        reason: str,
        message: str,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(code, reason, message, metadata)
        self.size_bytes = int(self.metadata["size_bytes"])
        self.size_bytes_max = int(self.metadata["size_bytes_max"])


class TooManyStreams(ResourceExhausted):
    """The server has as many event streams open as it allows; retry later."""


class RequestIdReused(CreditWalletError):
    """The request_id was already used with different parameters."""


class Unauthenticated(CreditWalletError):
    """Missing or unknown bearer token."""


class PermissionDenied(CreditWalletError):
    """The token's scope does not cover the RPC."""


class DeadlineExceeded(CreditWalletError):
    """No answer in time; the change may or may not be applied: retry with the same request_id."""


class Unavailable(CreditWalletError):
    """The server or its database is unreachable; safe to retry with the same request_id."""


class Internal(CreditWalletError):
    """A server bug; the server logged it with the request id."""


class PaymentProviderUnavailable(Unavailable):
    """The payment provider did not answer; retry."""


# One class per reason of the catalogue (creditwallet.core.reasons); a test checks both agree.
BY_REASON: Final[Mapping[str, type[CreditWalletError]]] = {
    "INVALID_ARGUMENT": InvalidArgument,
    "ACCOUNT_NOT_FOUND": AccountNotFound,
    "AGENT_NOT_FOUND": AgentNotFound,
    "HOLD_NOT_FOUND": HoldNotFound,
    "TRANSACTION_NOT_FOUND": TransactionNotFound,
    "REFERRAL_CODE_NOT_FOUND": ReferralCodeNotFound,
    "INSUFFICIENT_CREDITS": InsufficientCredits,
    "AGENT_DISABLED": AgentDisabled,
    "HOLD_EXPIRED": HoldExpired,
    "HOLD_FINALIZED": HoldFinalized,
    "REFERRAL_NOT_ALLOWED": ReferralNotAllowed,
    "ACCOUNT_IN_DEBT": AccountInDebt,
    "REVERSAL_EXCEEDS_DEBIT": ReversalExceedsDebit,
    "REQUEST_ID_REUSED": RequestIdReused,
    "UNAUTHENTICATED": Unauthenticated,
    "PERMISSION_DENIED": PermissionDenied,
    "DATABASE_UNAVAILABLE": Unavailable,
    "INTERNAL": Internal,
    "ENDPOINT_NOT_FOUND": EndpointNotFound,
    "AUTO_RECHARGE_ATTEMPT_NOT_FOUND": AutoRechargeAttemptNotFound,
    "AUTO_RECHARGE_NOT_CONFIGURED": AutoRechargeNotConfigured,
    "NO_PAYMENT_CUSTOMER": NoPaymentCustomer,
    "NO_DEFAULT_PAYMENT_METHOD": NoDefaultPaymentMethod,
    "PAYMENT_PROVIDER_REFUSED": PaymentProviderRefused,
    "PAYMENT_PROVIDER_UNAVAILABLE": PaymentProviderUnavailable,
    "TOO_MANY_STREAMS": TooManyStreams,
    "MESSAGE_TOO_LARGE": MessageTooLarge,
    "MEMBER_NOT_FOUND": MemberNotFound,
    "MEMBER_CAP_EXCEEDED": MemberCapExceeded,
}


def from_batch_error(error: wallet_service_pb2.BatchDebitError) -> CreditWalletError:
    """The typed exception of one refused debit of a BatchDebit: the class, code, reason and
    metadata that Debit would have raised for it."""
    try:
        code = grpc.StatusCode[error.code]
    except KeyError:
        code = grpc.StatusCode.UNKNOWN
    by_code = _BY_CODE.get(code, CreditWalletError)
    cls = BY_REASON.get(error.reason, by_code)
    reason = error.reason or code.name
    try:
        return cls(code, reason, error.message, dict(error.metadata))
    except (KeyError, ValueError):
        return by_code(code, reason, error.message, dict(error.metadata))


_BY_CODE: Final[Mapping[grpc.StatusCode, type[CreditWalletError]]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ALREADY_EXISTS: RequestIdReused,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.INTERNAL: Internal,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
}


def from_rpc_error(error: grpc.RpcError) -> CreditWalletError:
    """Returns the typed exception for a failed call (sync ``grpc.RpcError`` or aio's).

    Never raises: a malformed or foreign status detail degrades to the class of the code.
    """
    code = _code_of(error)
    status = _rich_status(error)
    info = _error_info(status) if status is not None else None
    message = status.message if status is not None else (error.details() or "")
    reason = info.reason if info is not None and info.reason else code.name
    metadata = dict(info.metadata) if info is not None else {}
    by_code = _BY_CODE.get(code, CreditWalletError)
    cls = BY_REASON.get(reason, by_code)
    try:
        return cls(code, reason, message, metadata)
    except (KeyError, ValueError):
        # A known reason without its documented metadata: keep code, reason and message.
        return by_code(code, reason, message, metadata)


def _code_of(error: grpc.RpcError) -> grpc.StatusCode:
    # Every RpcError raised by a call is also a grpc.Call with code(); a bare RpcError is not.
    code_method = getattr(error, "code", None)
    code = code_method() if callable(code_method) else None
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def _rich_status(error: grpc.RpcError) -> status_pb2.Status | None:
    try:
        # Both sync errors and AioRpcError quack like grpc.Call, which is all from_call reads.
        status = rpc_status.from_call(cast(grpc.Call, error))
    except (ValueError, DecodeError, AttributeError, TypeError):
        # ValueError: the detail's code or message disagrees with the call's; trust the call.
        # DecodeError: the trailer is not a Status at all (a foreign proxy, say).
        return None
    return status if isinstance(status, status_pb2.Status) else None


def _error_info(status: status_pb2.Status) -> error_details_pb2.ErrorInfo | None:
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info) and info.domain == ERROR_DOMAIN:
                return info
    return None
