"""``from_rpc_error``: the typed exception chosen by the server's reason, its figures as ints."""

from __future__ import annotations

import grpc
import grpc.aio
import pytest
from creditwallet.client import errors
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

TOKEN = "unit-test-token"
DETAILS_KEY = "grpc-status-details-bin"

# --- from_rpc_error -------------------------------------------------------------------------


def rpc_error(
    code: grpc.StatusCode,
    message: str,
    reason: str | None = None,
    metadata: dict[str, str] | None = None,
    *,
    domain: str = "creditwallet",
    status_message: str | None = None,
) -> grpc.aio.AioRpcError:
    """An AioRpcError as the server's abort produces it, with an optional ErrorInfo."""
    trailing = grpc.aio.Metadata()
    if reason is not None:
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=domain, metadata=metadata))
        status = status_pb2.Status(
            code=code.value[0],
            message=message if status_message is None else status_message,
            details=[detail],
        )
        trailing.add(DETAILS_KEY, status.SerializeToString())
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, message, None)


REASONS = [
    (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", errors.InvalidArgument),
    (grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND", errors.AccountNotFound),
    (grpc.StatusCode.NOT_FOUND, "AGENT_NOT_FOUND", errors.AgentNotFound),
    (grpc.StatusCode.NOT_FOUND, "HOLD_NOT_FOUND", errors.HoldNotFound),
    (grpc.StatusCode.NOT_FOUND, "TRANSACTION_NOT_FOUND", errors.TransactionNotFound),
    (grpc.StatusCode.NOT_FOUND, "REFERRAL_CODE_NOT_FOUND", errors.ReferralCodeNotFound),
    (grpc.StatusCode.FAILED_PRECONDITION, "AGENT_DISABLED", errors.AgentDisabled),
    (grpc.StatusCode.FAILED_PRECONDITION, "HOLD_EXPIRED", errors.HoldExpired),
    (grpc.StatusCode.FAILED_PRECONDITION, "HOLD_FINALIZED", errors.HoldFinalized),
    (grpc.StatusCode.FAILED_PRECONDITION, "REFERRAL_NOT_ALLOWED", errors.ReferralNotAllowed),
    (grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_IN_DEBT", errors.AccountInDebt),
    (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED", errors.RequestIdReused),
    (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED", errors.Unauthenticated),
    (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED", errors.PermissionDenied),
    (grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE", errors.Unavailable),
    (grpc.StatusCode.INTERNAL, "INTERNAL", errors.Internal),
]


@pytest.mark.parametrize(("code", "reason", "cls"), REASONS)
def test_from_rpc_error_picks_class_by_reason(
    code: grpc.StatusCode, reason: str, cls: type[errors.CreditWalletError]
) -> None:
    error = errors.from_rpc_error(rpc_error(code, "refused", reason, {"field": "user_id"}))
    assert type(error) is cls
    assert (error.code, error.reason, error.message) == (code, reason, "refused")
    assert error.metadata == {"field": "user_id"}
    assert str(error) == f"{reason}: refused"
    assert error.retryable == (code == grpc.StatusCode.UNAVAILABLE)


def test_insufficient_credits_carries_int_micros() -> None:
    metadata = {"available_micros": "1500000", "required_micros": "2000000"}
    error = errors.from_rpc_error(
        rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "short", "INSUFFICIENT_CREDITS", metadata)
    )
    assert isinstance(error, errors.InsufficientCredits)
    assert isinstance(error, errors.FailedPrecondition)
    assert (error.available_micros, error.required_micros) == (1_500_000, 2_000_000)


def test_insufficient_credits_without_figures_degrades_to_its_code() -> None:
    error = errors.from_rpc_error(
        rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "short", "INSUFFICIENT_CREDITS", {})
    )
    assert type(error) is errors.FailedPrecondition
    assert error.reason == "INSUFFICIENT_CREDITS"


def test_invalid_argument_names_the_field() -> None:
    error = errors.from_rpc_error(
        rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "bad", "INVALID_ARGUMENT", {"field": "x"})
    )
    assert isinstance(error, errors.InvalidArgument)
    assert error.field == "x"


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.NOT_FOUND, errors.NotFound),
        (grpc.StatusCode.UNAVAILABLE, errors.Unavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, errors.DeadlineExceeded),
        (grpc.StatusCode.CANCELLED, errors.CreditWalletError),
        (grpc.StatusCode.UNKNOWN, errors.CreditWalletError),
    ],
)
def test_from_rpc_error_without_details_picks_class_by_code(
    code: grpc.StatusCode, cls: type[errors.CreditWalletError]
) -> None:
    error = errors.from_rpc_error(rpc_error(code, "transport says no"))
    assert type(error) is cls
    assert (error.reason, error.message, error.metadata) == (code.name, "transport says no", {})


def test_unknown_reason_keeps_reason_and_uses_code_class() -> None:
    error = errors.from_rpc_error(rpc_error(grpc.StatusCode.NOT_FOUND, "gone", "WIDGET_NOT_FOUND"))
    assert type(error) is errors.NotFound
    assert error.reason == "WIDGET_NOT_FOUND"


def test_foreign_domain_and_inconsistent_details_are_ignored() -> None:
    foreign = rpc_error(grpc.StatusCode.NOT_FOUND, "x", "ACCOUNT_NOT_FOUND", domain="other.example")
    assert type(errors.from_rpc_error(foreign)) is errors.NotFound
    # grpc_status refuses a Status whose message disagrees with the call's details.
    mismatched = rpc_error(
        grpc.StatusCode.NOT_FOUND, "call", "ACCOUNT_NOT_FOUND", status_message="status"
    )
    error = errors.from_rpc_error(mismatched)
    assert (type(error), error.reason) == (errors.NotFound, "NOT_FOUND")
