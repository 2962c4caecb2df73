"""Every documented error for a bad input, with nothing changed; token scopes on every RPC."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from creditwallet.client import errors as cw
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.server.app import SERVICE_NAMES
from creditwallet.v1 import admin_service_pb2 as apb
from creditwallet.v1 import common_pb2 as pb
from creditwallet.v1 import wallet_service_pb2 as wpb
from google.protobuf import message_factory
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from tests.harness import TOKENS, Ledger, new_user

pytestmark = pytest.mark.usefixtures("verified")

CREDIT = 1_000_000
U = "user-errors-fixture"


async def snapshot(ledger: Ledger) -> tuple[Any, ...]:
    async with ledger.pool.acquire() as conn:
        return (
            await conn.fetch("SELECT * FROM credits ORDER BY user_id"),
            await conn.fetch("SELECT * FROM credit_lots ORDER BY user_id, lot_id"),
            await conn.fetchval("SELECT count(*) FROM credit_transactions"),
            await conn.fetchval("SELECT count(*) FROM holds"),
            await conn.fetchval("SELECT count(*) FROM idempotency_records"),
        )


BAD_REQUESTS: list[tuple[str, str, Message, type[cw.CreditWalletError], str]] = [
    (
        "wallet",
        "Debit",
        wpb.DebitRequest(user_id="", request_id="x", amount_micros=1),
        cw.InvalidArgument,
        "INVALID_ARGUMENT",
    ),
    (
        "wallet",
        "Debit",
        wpb.DebitRequest(user_id="bad id!", request_id="x", amount_micros=1),
        cw.InvalidArgument,
        "INVALID_ARGUMENT",
    ),
    (
        "wallet",
        "Debit",
        wpb.DebitRequest(user_id="u" * 129, request_id="x", amount_micros=1),
        cw.InvalidArgument,
        "INVALID_ARGUMENT",
    ),
    (
        "wallet",
        "Debit",
        wpb.DebitRequest(user_id=U, request_id="", amount_micros=1),
        cw.InvalidArgument,
        "INVALID_ARGUMENT",
    ),
    (
        "wallet",
        "Debit",
        wpb.DebitRequest(user_id=U, request_id="x", amount_micros=-5),
        cw.InvalidArgument,
        "INVALID_ARGUMENT",
    ),
    (
        "wallet",
        "Debit",
        wpb.DebitRequest(user_id=U, request_id="x", amount_micros=2**63 - 1),
        cw.InvalidArgument,
        "INVALID_ARGUMENT",
    ),
    (
        "wallet",
        "Debit",
        wpb.DebitRequest(user_id=U, request_id="x"),
        cw.InvalidArgument,
        "INVALID_ARGUMENT",
    ),
    (
        "wallet",
        "Debit",
        wpb.DebitRequest(user_id=U, request_id="x", agent_id="a", amount_micros=1),
        cw.InvalidArgument,
        "INVALID_ARGUMENT",
    ),
    (
        "wallet",
        "Debit",
        wpb.DebitRequest(user_id=U, request_id="x", agent_id="pricey", quantity=0),
        cw.InvalidArgument,
        "INVALID_ARGUMENT",
    ),
    (
        "wallet",
        "Debit",
        wpb.DebitRequest(user_id=U, request_id="x", agent_id="pricey", quantity=2**62),
        cw.InvalidArgument,
        "INVALID_ARGUMENT",
    ),
    (
        "wallet",
        "Debit",
        wpb.DebitRequest(user_id=U, request_id="x", agent_id="pricey", quantity=999_999_999),
        cw.InvalidArgument,
        "INVALID_ARGUMENT",
    ),
    (
        "wallet",
        "Authorize",
        wpb.AuthorizeRequest(user_id=U, request_id="x", amount_micros=1, ttl_seconds=86_401),
        cw.InvalidArgument,
        "INVALID_ARGUMENT",
    ),
    (
        "wallet",
        "Capture",
        wpb.CaptureRequest(user_id=U, hold_id="not-a-uuid", request_id="x"),
        cw.InvalidArgument,
        "INVALID_ARGUMENT",
    ),
    (
        "wallet",
        "ListTransactions",
        wpb.ListTransactionsRequest(user_id=U, page_size=501),
        cw.InvalidArgument,
        "INVALID_ARGUMENT",
    ),
    (
        "wallet",
        "ListTransactions",
        wpb.ListTransactionsRequest(user_id=U, page_token="%%%"),
        cw.InvalidArgument,
        "INVALID_ARGUMENT",
    ),
    (
        "admin",
        "Grant",
        apb.GrantRequest(user_id=U, request_id="x", amount_micros=CREDIT),
        cw.InvalidArgument,
        "INVALID_ARGUMENT",
    ),
    (
        "admin",
        "ReverseDebit",
        apb.ReverseDebitRequest(user_id=U, request_id="x", transaction_id="abc"),
        cw.InvalidArgument,
        "INVALID_ARGUMENT",
    ),
    (
        "admin",
        "SetAgentPrice",
        apb.SetAgentPriceRequest(agent_id="a", price_micros=0),
        cw.InvalidArgument,
        "INVALID_ARGUMENT",
    ),
    (
        "admin",
        "Grant",
        apb.GrantRequest(
            user_id=U,
            request_id="x",
            amount_micros=CREDIT,
            source=pb.LOT_SOURCE_PROMO,
            expires_at=Timestamp(seconds=253_402_300_800),  # year 10000
        ),
        cw.InvalidArgument,
        "INVALID_ARGUMENT",
    ),
    (
        "wallet",
        "Debit",
        wpb.DebitRequest(user_id="nobody", request_id="x1", amount_micros=1),
        cw.AccountNotFound,
        "ACCOUNT_NOT_FOUND",
    ),
    (
        "wallet",
        "Debit",
        wpb.DebitRequest(user_id=U, request_id="x2", agent_id="ghost"),
        cw.AgentNotFound,
        "AGENT_NOT_FOUND",
    ),
    (
        "wallet",
        "Debit",
        wpb.DebitRequest(user_id=U, request_id="x3", agent_id="off"),
        cw.AgentDisabled,
        "AGENT_DISABLED",
    ),
    (
        "wallet",
        "Void",
        wpb.VoidRequest(user_id=U, hold_id="00000000-0000-4000-8000-000000000000", request_id="x4"),
        cw.HoldNotFound,
        "HOLD_NOT_FOUND",
    ),
    (
        "admin",
        "ReverseDebit",
        apb.ReverseDebitRequest(user_id=U, request_id="x5", transaction_id="123456789"),
        cw.TransactionNotFound,
        "TRANSACTION_NOT_FOUND",
    ),
    (
        "wallet",
        "Debit",
        wpb.DebitRequest(user_id=U, request_id="x6", amount_micros=99 * CREDIT),
        cw.InsufficientCredits,
        "INSUFFICIENT_CREDITS",
    ),
]


@pytest.mark.parametrize(
    ("service", "method", "request_message", "error", "reason"),
    BAD_REQUESTS,
    ids=[f"{m}-{r}-{i}" for i, (_, m, _, _, r) in enumerate(BAD_REQUESTS)],
)
async def test_bad_input_gets_its_code_and_reason_and_changes_nothing(
    ledger: Ledger,
    admin: AsyncCreditWalletClient,
    service: str,
    method: str,
    request_message: Message,
    error: type[cw.CreditWalletError],
    reason: str,
) -> None:
    await admin.ensure_account(U)
    await admin.set_agent_price("pricey", 10**7)
    await admin.set_agent_price("off", 10**6, active=False)
    before = await snapshot(ledger)
    call = getattr(getattr(admin, service), method)
    with pytest.raises(error) as refused:
        await call(request_message)
    assert refused.value.reason == reason
    after = await snapshot(ledger)
    stored = reason != "INVALID_ARGUMENT"
    # A state-dependent refusal is remembered under its request_id and nothing else moves.
    assert after[:4] == before[:4]
    assert after[4] == before[4] + (1 if stored else 0)


async def test_insufficient_credits_carries_figures(admin: AsyncCreditWalletClient) -> None:
    user = new_user()
    await admin.ensure_account(user)
    with pytest.raises(cw.InsufficientCredits) as refused:
        await admin.debit(user, amount_micros=7 * CREDIT)
    assert refused.value.available_micros == 5 * CREDIT
    assert refused.value.required_micros == 7 * CREDIT
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION


def all_rpcs() -> list[tuple[str, str, Message]]:
    from creditwallet.v1 import admin_service_pb2, billing_service_pb2, wallet_service_pb2

    out = []
    for module in (wallet_service_pb2, billing_service_pb2, admin_service_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                request = message_factory.GetMessageClass(method.input_type)()
                if method.server_streaming:  # refused at once when authorized, not followed
                    request.after_cursor = "not-a-cursor"  # type: ignore[attr-defined]
                out.append((service.full_name, method.name, request))
    return out


SCOPE_OF = {
    "creditwallet.v1.WalletService": "agent",
    "creditwallet.v1.BillingService": "billing",
    "creditwallet.v1.AdminService": "admin",
}


@pytest.mark.parametrize(("service", "method", "request_message"), all_rpcs())
async def test_every_rpc_enforces_its_scope(
    ledger: Ledger, service: str, method: str, request_message: Message
) -> None:
    assert service in SERVICE_NAMES
    path = f"/{service}/{method}"
    streaming = method == "StreamEvents"
    async with grpc.aio.insecure_channel(ledger.target) as channel:
        call = channel.unary_unary(
            path,
            request_serializer=type(request_message).SerializeToString,
            response_deserializer=lambda b: b,
        )
        stream = channel.unary_stream(
            path,
            request_serializer=type(request_message).SerializeToString,
            response_deserializer=lambda b: b,
        )

        async def code_with(metadata: tuple[tuple[str, str], ...]) -> grpc.StatusCode:
            try:
                if streaming:
                    async for _ in stream(request_message, metadata=metadata, timeout=5):
                        break
                else:
                    await call(request_message, metadata=metadata, timeout=5)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

        assert await code_with(()) == grpc.StatusCode.UNAUTHENTICATED
        assert await code_with((("authorization", "Bearer wrong"),)) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
        assert await code_with((("authorization", TOKENS["agent"]),)) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
        own = SCOPE_OF[service]
        for scope in ("agent", "billing", "admin"):
            code = await code_with((("authorization", f"Bearer {TOKENS[scope]}"),))
            if scope == own or scope == "admin":
                assert code not in (
                    grpc.StatusCode.UNAUTHENTICATED,
                    grpc.StatusCode.PERMISSION_DENIED,
                ), (scope, code)
            else:
                assert code == grpc.StatusCode.PERMISSION_DENIED, (scope, code)


async def test_health_is_open_and_serving(ledger: Ledger) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(ledger.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
