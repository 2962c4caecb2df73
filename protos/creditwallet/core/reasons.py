"""Every refusal the API can answer, named once: its reason, its gRPC code, what it means.

The server refuses with one of these reasons (``google.rpc.ErrorInfo``, domain
``creditwallet``) and the client maps each to a typed exception; a test checks that both sides
cover exactly this catalogue, so a reason cannot be added on one side only. Metadata keys are
part of the contract (strings; amounts are decimal micros).

``stored``: the refusal depends on the ledger's state and is recorded under the request_id, so
a retry with the same request_id gets the same answer. Malformed requests and transport-level
refusals are never stored: the caller may fix the request and retry with the same key.
"""

from __future__ import annotations

import dataclasses
from typing import Final

DOMAIN: Final = "creditwallet"

# The gRPC status codes the API uses, by name (grpc.StatusCode[name] on either side).
INVALID_ARGUMENT: Final = "INVALID_ARGUMENT"
NOT_FOUND: Final = "NOT_FOUND"
FAILED_PRECONDITION: Final = "FAILED_PRECONDITION"
ALREADY_EXISTS: Final = "ALREADY_EXISTS"
UNAUTHENTICATED: Final = "UNAUTHENTICATED"
PERMISSION_DENIED: Final = "PERMISSION_DENIED"
RESOURCE_EXHAUSTED: Final = "RESOURCE_EXHAUSTED"
UNAVAILABLE: Final = "UNAVAILABLE"
INTERNAL: Final = "INTERNAL"

_NOT_STORED: Final = frozenset(
    {
        INVALID_ARGUMENT,
        UNAUTHENTICATED,
        PERMISSION_DENIED,
        RESOURCE_EXHAUSTED,
        UNAVAILABLE,
        INTERNAL,
    }
)


@dataclasses.dataclass(frozen=True)
class Reason:
    name: str
    code: str
    meaning: str
    metadata: tuple[str, ...] = ()

    @property
    def stored(self) -> bool:
        return self.code not in _NOT_STORED


CATALOGUE: Final = (
    Reason("INVALID_ARGUMENT", INVALID_ARGUMENT, "the request is malformed", ("field",)),
    Reason("ACCOUNT_NOT_FOUND", NOT_FOUND, "no account for the user_id", ("user_id",)),
    Reason("AGENT_NOT_FOUND", NOT_FOUND, "no price for the agent_id", ("agent_id",)),
    Reason("HOLD_NOT_FOUND", NOT_FOUND, "no hold with the hold_id for that account", ("hold_id",)),
    Reason(
        "TRANSACTION_NOT_FOUND",
        NOT_FOUND,
        "no debit with the transaction_id for that account",
        ("transaction_id",),
    ),
    Reason("REFERRAL_CODE_NOT_FOUND", NOT_FOUND, "no referral code like the one given", ("code",)),
    Reason(
        "INSUFFICIENT_CREDITS",
        FAILED_PRECONDITION,
        "not enough available credits for the spend's agent (the lots that apply to it, less"
        " the debt; overdraft_left_micros too when the account has an overdraft limit); a"
        " retry needs more credits and a new request_id",
        ("available_micros", "required_micros"),
    ),
    Reason("AGENT_DISABLED", FAILED_PRECONDITION, "the agent's price is inactive", ("agent_id",)),
    Reason(
        "HOLD_EXPIRED",
        FAILED_PRECONDITION,
        "the hold's TTL passed before it was settled",
        ("hold_id",),
    ),
    Reason(
        "HOLD_FINALIZED",
        FAILED_PRECONDITION,
        "the hold was already captured or voided",
        ("hold_id",),
    ),
    Reason(
        "REFERRAL_NOT_ALLOWED",
        FAILED_PRECONDITION,
        "the referral rules refuse this redemption",
        ("rule",),
    ),
    Reason(
        "ACCOUNT_IN_DEBT",
        FAILED_PRECONDITION,
        "the account's debt (a refund's) is beyond its overdraft limit; debits are refused"
        " until credits pay it down",
        ("debt_micros",),
    ),
    Reason(
        "REVERSAL_EXCEEDS_DEBIT",
        FAILED_PRECONDITION,
        "more than what is left of the debit would be reversed",
        ("reversible_micros",),
    ),
    Reason(
        "REQUEST_ID_REUSED",
        ALREADY_EXISTS,
        "the request_id was already used with different parameters",
        ("request_id",),
    ),
    Reason("UNAUTHENTICATED", UNAUTHENTICATED, "missing or unknown bearer token"),
    Reason(
        "PERMISSION_DENIED",
        PERMISSION_DENIED,
        "the token's scope does not cover the RPC",
        ("scope",),
    ),
    Reason(
        "DATABASE_UNAVAILABLE",
        UNAVAILABLE,
        "the database cannot be reached; retry with the same request_id",
    ),
    Reason("INTERNAL", INTERNAL, "a server bug, logged with the request id"),
    # Team wallets (docs/teams-and-usage.md).
    Reason(
        "MEMBER_NOT_FOUND",
        NOT_FOUND,
        "no active member with the member_id in that account",
        ("member_id",),
    ),
    Reason(
        "MEMBER_CAP_EXCEEDED",
        FAILED_PRECONDITION,
        "the member's spend in its current period (holds included) would exceed its cap; a "
        "retry needs a new period, a higher cap or a smaller amount, and a new request_id",
        ("member_id", "spent_micros", "required_micros", "cap_micros", "period_end"),
    ),
    # Events out (docs/events.md).
    Reason("ENDPOINT_NOT_FOUND", NOT_FOUND, "no configured webhook endpoint", ("endpoint_id",)),
    Reason(
        "AUTO_RECHARGE_ATTEMPT_NOT_FOUND",
        NOT_FOUND,
        "no auto-recharge attempt with the attempt_id for that user",
        ("attempt_id",),
    ),
    Reason(
        "AUTO_RECHARGE_NOT_CONFIGURED",
        FAILED_PRECONDITION,
        "the server has no payment provider key",
    ),
    Reason(
        "NO_PAYMENT_CUSTOMER",
        FAILED_PRECONDITION,
        "the account has no payment customer yet (no purchase linked one)",
    ),
    Reason(
        "NO_DEFAULT_PAYMENT_METHOD",
        FAILED_PRECONDITION,
        "the account's payment customer has no default payment method",
    ),
    Reason(
        "PAYMENT_PROVIDER_REFUSED",
        FAILED_PRECONDITION,
        "the payment provider refused the request (e.g. an unknown price or customer)",
    ),
    Reason(
        "PAYMENT_PROVIDER_UNAVAILABLE",
        UNAVAILABLE,
        "the payment provider did not answer; retry",
    ),
    Reason(
        "MESSAGE_TOO_LARGE",
        RESOURCE_EXHAUSTED,
        "the request message is larger than its method takes; send less (split a batch)",
        ("size_bytes", "size_bytes_max"),
    ),
    Reason(
        "TOO_MANY_STREAMS",
        RESOURCE_EXHAUSTED,
        "the server has as many event streams open as it allows; retry later",
    ),
)

BY_NAME: Final = {reason.name: reason for reason in CATALOGUE}


def _check() -> None:
    if len(BY_NAME) != len(CATALOGUE):
        raise ValueError("a reason is named twice in the catalogue")


_check()
