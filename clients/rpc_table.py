"""The table of every RPC the clients call, and the call policy both clients share.

Why a table instead of the generated stubs: the sync and the async client need the same 22
methods with the same request and response types. One typed ``Rpc[Request, Response]`` per RPC,
called through ``channel.unary_unary(rpc.path, ...)``, serves both channels, so each client
only has to say how it waits (``await`` or block) and sleeps. A unit test checks this table
against the compiled service descriptors, so it cannot drift from the protos.

The policy (deadline, retry, backoff, message size) lives here as named constants, because a
limit that is written down can be reviewed and tested once for both clients.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

import grpc
from creditwallet.core import limits
from creditwallet.v1 import admin_service_pb2 as admin_pb2
from creditwallet.v1 import billing_service_pb2 as billing_pb2
from creditwallet.v1 import events_pb2
from creditwallet.v1 import wallet_service_pb2 as wallet_pb2
from google.protobuf.message import Message

RequestT = TypeVar("RequestT", bound=Message)
ResponseT = TypeVar("ResponseT", bound=Message)

# Retries: only UNAVAILABLE, always with the identical request message (so the same
# request_id), because the server guarantees a replay returns the original outcome (AIP-194).
# Any other code is an answer, and asking again would only repeat it or hide it. The bounds
# (deadlines, retries, backoff, message size) are in ``creditwallet.core.limits``.
RETRYABLE_CODES: Final = frozenset({grpc.StatusCode.UNAVAILABLE})


@dataclass(frozen=True)
class Rpc(Generic[RequestT, ResponseT]):
    """One unary RPC: its service's full name, its method name and its message types."""

    service: str
    name: str
    request_type: type[RequestT]
    response_type: type[ResponseT]

    @property
    def path(self) -> str:
        """The HTTP/2 path gRPC calls, e.g. ``/creditwallet.v1.WalletService/Debit``."""
        return f"/{self.service}/{self.name}"

    def checked_response(self, response: object) -> ResponseT:
        """The deserialized response, typed; channels hand it back untyped."""
        if not isinstance(response, self.response_type):
            raise TypeError(f"{self.path} returned {type(response).__name__}")
        return response


WALLET_SERVICE: Final = "creditwallet.v1.WalletService"
BILLING_SERVICE: Final = "creditwallet.v1.BillingService"
ADMIN_SERVICE: Final = "creditwallet.v1.AdminService"

ENSURE_ACCOUNT: Final = Rpc(
    WALLET_SERVICE,
    "EnsureAccount",
    wallet_pb2.EnsureAccountRequest,
    wallet_pb2.EnsureAccountResponse,
)
GET_BALANCE: Final = Rpc(
    WALLET_SERVICE, "GetBalance", wallet_pb2.GetBalanceRequest, wallet_pb2.GetBalanceResponse
)
DEBIT: Final = Rpc(WALLET_SERVICE, "Debit", wallet_pb2.DebitRequest, wallet_pb2.DebitResponse)
BATCH_DEBIT: Final = Rpc(
    WALLET_SERVICE, "BatchDebit", wallet_pb2.BatchDebitRequest, wallet_pb2.BatchDebitResponse
)
AUTHORIZE: Final = Rpc(
    WALLET_SERVICE, "Authorize", wallet_pb2.AuthorizeRequest, wallet_pb2.AuthorizeResponse
)
CAPTURE: Final = Rpc(
    WALLET_SERVICE, "Capture", wallet_pb2.CaptureRequest, wallet_pb2.CaptureResponse
)
VOID: Final = Rpc(WALLET_SERVICE, "Void", wallet_pb2.VoidRequest, wallet_pb2.VoidResponse)
LIST_TRANSACTIONS: Final = Rpc(
    WALLET_SERVICE,
    "ListTransactions",
    wallet_pb2.ListTransactionsRequest,
    wallet_pb2.ListTransactionsResponse,
)
GET_USAGE: Final = Rpc(
    WALLET_SERVICE, "GetUsage", wallet_pb2.GetUsageRequest, wallet_pb2.GetUsageResponse
)
GET_STREAK: Final = Rpc(
    WALLET_SERVICE, "GetStreak", wallet_pb2.GetStreakRequest, wallet_pb2.GetStreakResponse
)
GET_REFERRAL_CODE: Final = Rpc(
    WALLET_SERVICE,
    "GetReferralCode",
    wallet_pb2.GetReferralCodeRequest,
    wallet_pb2.GetReferralCodeResponse,
)
REDEEM_REFERRAL_CODE: Final = Rpc(
    WALLET_SERVICE,
    "RedeemReferralCode",
    wallet_pb2.RedeemReferralCodeRequest,
    wallet_pb2.RedeemReferralCodeResponse,
)

RECORD_PURCHASE: Final = Rpc(
    BILLING_SERVICE,
    "RecordPurchase",
    billing_pb2.RecordPurchaseRequest,
    billing_pb2.RecordPurchaseResponse,
)
SYNC_SUBSCRIPTION: Final = Rpc(
    BILLING_SERVICE,
    "SyncSubscription",
    billing_pb2.SyncSubscriptionRequest,
    billing_pb2.SyncSubscriptionResponse,
)
RECORD_PAYMENT_FAILURE: Final = Rpc(
    BILLING_SERVICE,
    "RecordPaymentFailure",
    billing_pb2.RecordPaymentFailureRequest,
    billing_pb2.RecordPaymentFailureResponse,
)
RECORD_REFUND: Final = Rpc(
    BILLING_SERVICE,
    "RecordRefund",
    billing_pb2.RecordRefundRequest,
    billing_pb2.RecordRefundResponse,
)
ROLLOVER: Final = Rpc(
    BILLING_SERVICE, "Rollover", billing_pb2.RolloverRequest, billing_pb2.RolloverResponse
)

GRANT: Final = Rpc(ADMIN_SERVICE, "Grant", admin_pb2.GrantRequest, admin_pb2.GrantResponse)
REVERSE_DEBIT: Final = Rpc(
    ADMIN_SERVICE,
    "ReverseDebit",
    admin_pb2.ReverseDebitRequest,
    admin_pb2.ReverseDebitResponse,
)
SET_AGENT_PRICE: Final = Rpc(
    ADMIN_SERVICE,
    "SetAgentPrice",
    admin_pb2.SetAgentPriceRequest,
    admin_pb2.SetAgentPriceResponse,
)
LIST_AGENT_PRICES: Final = Rpc(
    ADMIN_SERVICE,
    "ListAgentPrices",
    admin_pb2.ListAgentPricesRequest,
    admin_pb2.ListAgentPricesResponse,
)
GET_STATS: Final = Rpc(
    ADMIN_SERVICE, "GetStats", admin_pb2.GetStatsRequest, admin_pb2.GetStatsResponse
)
VERIFY_LEDGER: Final = Rpc(
    ADMIN_SERVICE,
    "VerifyLedger",
    admin_pb2.VerifyLedgerRequest,
    admin_pb2.VerifyLedgerResponse,
)
SET_MEMBER: Final = Rpc(
    ADMIN_SERVICE, "SetMember", admin_pb2.SetMemberRequest, admin_pb2.SetMemberResponse
)
LIST_MEMBERS: Final = Rpc(
    ADMIN_SERVICE, "ListMembers", admin_pb2.ListMembersRequest, admin_pb2.ListMembersResponse
)
GET_ROLLOVER_PROGRESS: Final = Rpc(
    ADMIN_SERVICE,
    "GetRolloverProgress",
    admin_pb2.GetRolloverProgressRequest,
    admin_pb2.GetRolloverProgressResponse,
)
SET_OVERDRAFT_LIMIT: Final = Rpc(
    ADMIN_SERVICE,
    "SetOverdraftLimit",
    admin_pb2.SetOverdraftLimitRequest,
    admin_pb2.SetOverdraftLimitResponse,
)
LIST_HOLDS: Final = Rpc(
    ADMIN_SERVICE, "ListHolds", admin_pb2.ListHoldsRequest, admin_pb2.ListHoldsResponse
)
GET_DAILY_TOTALS: Final = Rpc(
    ADMIN_SERVICE,
    "GetDailyTotals",
    admin_pb2.GetDailyTotalsRequest,
    admin_pb2.GetDailyTotalsResponse,
)

# Events (server-streaming StreamEvents is not in this table: see the async client).
RECORD_AUTO_RECHARGE_PAYMENT: Final = Rpc(
    BILLING_SERVICE,
    "RecordAutoRechargePayment",
    events_pb2.RecordAutoRechargePaymentRequest,
    events_pb2.RecordAutoRechargePaymentResponse,
)
SET_BALANCE_ALERT: Final = Rpc(
    ADMIN_SERVICE,
    "SetBalanceAlert",
    events_pb2.SetBalanceAlertRequest,
    events_pb2.SetBalanceAlertResponse,
)
SET_AUTO_RECHARGE: Final = Rpc(
    ADMIN_SERVICE,
    "SetAutoRecharge",
    events_pb2.SetAutoRechargeRequest,
    events_pb2.SetAutoRechargeResponse,
)
LIST_EVENTS: Final = Rpc(
    ADMIN_SERVICE, "ListEvents", events_pb2.ListEventsRequest, events_pb2.ListEventsResponse
)
REPLAY_EVENTS: Final = Rpc(
    ADMIN_SERVICE, "ReplayEvents", events_pb2.ReplayEventsRequest, events_pb2.ReplayEventsResponse
)
LIST_WEBHOOK_ENDPOINTS: Final = Rpc(
    ADMIN_SERVICE,
    "ListWebhookEndpoints",
    events_pb2.ListWebhookEndpointsRequest,
    events_pb2.ListWebhookEndpointsResponse,
)

ALL_RPCS: Final[tuple[Rpc[Any, Any], ...]] = (
    ENSURE_ACCOUNT,
    GET_BALANCE,
    DEBIT,
    BATCH_DEBIT,
    AUTHORIZE,
    CAPTURE,
    VOID,
    LIST_TRANSACTIONS,
    GET_USAGE,
    GET_STREAK,
    GET_REFERRAL_CODE,
    REDEEM_REFERRAL_CODE,
    RECORD_PURCHASE,
    SYNC_SUBSCRIPTION,
    RECORD_PAYMENT_FAILURE,
    RECORD_REFUND,
    ROLLOVER,
    GRANT,
    REVERSE_DEBIT,
    SET_AGENT_PRICE,
    LIST_AGENT_PRICES,
    GET_STATS,
    VERIFY_LEDGER,
    RECORD_AUTO_RECHARGE_PAYMENT,
    SET_BALANCE_ALERT,
    SET_AUTO_RECHARGE,
    LIST_EVENTS,
    REPLAY_EVENTS,
    LIST_WEBHOOK_ENDPOINTS,
    GET_ROLLOVER_PROGRESS,
    SET_OVERDRAFT_LIMIT,
    SET_MEMBER,
    LIST_MEMBERS,
    LIST_HOLDS,
    GET_DAILY_TOTALS,
)


def should_retry(code: grpc.StatusCode | None, retries_done: int, retries_max: int) -> bool:
    """Whether a failed attempt is sent again: a retryable code and retries left."""
    return code in RETRYABLE_CODES and retries_done < retries_max


def backoff_seconds(retries_done: int, rng: random.Random) -> float:
    """The pause before retry number ``retries_done + 1``: exponential, capped, jittered."""
    ceiling = min(
        limits.CLIENT_RETRY_BACKOFF_INITIAL_SECONDS
        * limits.CLIENT_RETRY_BACKOFF_MULTIPLIER**retries_done,
        limits.CLIENT_RETRY_BACKOFF_MAX_SECONDS,
    )
    return rng.uniform(ceiling / 2, ceiling)


def channel_options(
    message_bytes_max: int, round_robin: bool = False, own_connection: bool = False
) -> list[tuple[str, Any]]:
    """Channel arguments both clients pass; sizes explicit rather than gRPC's defaults.

    ``round_robin``: spread calls over every address the target resolves to (e.g. a DNS name
    of several server replicas, ``dns:///ledger.internal:50051``) instead of gRPC's default
    of using the first that connects.

    ``own_connection``: a connection of this channel's own. By default gRPC lets every channel
    of a process to the same target share one connection, so all of them reach the one
    server process that accepted it; clients with connections of their own are spread over
    the worker processes of a server with ``GRPC_WORKERS`` > 1.
    """
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", message_bytes_max),
        ("grpc.max_receive_message_length", message_bytes_max),
        # A restarted server is found again within a couple of seconds, not gRPC's minutes,
        # so that retries of UNAVAILABLE meet a channel that is trying again.
        (
            "grpc.initial_reconnect_backoff_ms",
            int(limits.CLIENT_RECONNECT_BACKOFF_INITIAL_SECONDS * 1000),
        ),
        ("grpc.max_reconnect_backoff_ms", int(limits.CLIENT_RECONNECT_BACKOFF_MAX_SECONDS * 1000)),
    ]
    if own_connection:
        options.append(("grpc.use_local_subchannel_pool", 1))
    if round_robin:
        options.append(
            ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]}))
        )
    return options
