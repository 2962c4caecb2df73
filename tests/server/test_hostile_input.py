"""Hostile input on every RPC: only the documented codes, and nothing changes.

For every RPC of WalletService, BillingService and AdminService, hypothesis builds requests
from the message descriptor (tests/hostile.py) and sends them with the admin token (which may
call everything). Each answer must be a documented code (docs/api.md) — never UNKNOWN or
INTERNAL (nor UNIMPLEMENTED: every RPC is built). A refused request changes no money
(accounts, lots, transactions, holds, prices); a malformed one (INVALID_ARGUMENT) also
stores no idempotency record. Requests that happen to be valid may succeed: the ledger
must then still verify (the ``verified`` fixture).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio
from creditwallet.client import rpc_table
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.core import limits
from creditwallet.v1 import admin_service_pb2 as apb
from creditwallet.v1 import common_pb2 as pb
from creditwallet.v1 import wallet_service_pb2 as wpb
from google.protobuf.message import Message
from hypothesis import given
from hypothesis import strategies as st

from tests import hostile
from tests.harness import TOKENS, Ledger, new_user
from tests.hostile import snapshot

pytestmark = pytest.mark.usefixtures("verified")

CREDIT = 1_000_000
SPEC_CODES = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ALREADY_EXISTS,
    }
)
METADATA = (("authorization", f"Bearer {TOKENS['admin']}"),)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def known(admin: AsyncCreditWalletClient) -> list[str]:
    """Values that pass validation, so hostile requests also reach the ledger's checks."""
    rich, broke = new_user(), new_user()
    for user in (rich, broke):
        await admin.ensure_account(user)
    await admin.grant(rich, 100 * CREDIT, pb.LOT_SOURCE_TOP_UP)
    await admin.debit(broke, amount_micros=5 * CREDIT)  # the trial, spent
    await admin.set_agent_price("pricey", 10 * CREDIT)
    await admin.set_agent_price("maxed", limits.AMOUNT_MICROS_MAX)  # x quantity overflows
    await admin.set_agent_price("off", CREDIT, active=False)
    hold = await admin.authorize(rich, amount_micros=CREDIT, ttl_seconds=3600)
    spent = await admin.debit(rich, amount_micros=CREDIT)
    return [rich, broke, "pricey", "maxed", "off", hold.hold_id, spent.transaction_id, "2026-01"]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def channel(ledger: Ledger) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(ledger.target) as opened:
        yield opened


async def code_of(channel: grpc.aio.Channel, rpc: rpc_table.Rpc[Any, Any], request: Message) -> Any:
    call = channel.unary_unary(
        rpc.path,
        request_serializer=rpc.request_type.SerializeToString,
        response_deserializer=rpc.response_type.FromString,
    )
    try:
        await call(request, metadata=METADATA, timeout=10)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("rpc", rpc_table.ALL_RPCS, ids=[r.name for r in rpc_table.ALL_RPCS])
@given(data=st.data())
async def test_hostile_requests_get_spec_codes_and_change_nothing(
    ledger: Ledger,
    channel: grpc.aio.Channel,
    known: list[str],
    rpc: rpc_table.Rpc[Any, Any],
    data: st.DataObject,
) -> None:
    request = data.draw(hostile.requests(rpc.request_type, known), label="request")
    before = await snapshot(ledger)
    code = await code_of(channel, rpc, request)
    after = await snapshot(ledger)
    bytes_max = (
        limits.BATCH_DEBIT_BYTES_MAX
        if rpc is rpc_table.BATCH_DEBIT
        else limits.GRPC_RECEIVE_BYTES_MAX
    )
    if request.ByteSize() > bytes_max:
        # Larger than the method takes: refused before it is parsed (as below).
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, request.ByteSize())
    else:
        assert code in SPEC_CODES, (code, request)
    if code != grpc.StatusCode.OK:
        money = {k: v for k, v in after.items() if k != "idempotency"}
        assert money == {k: v for k, v in before.items() if k != "idempotency"}, request
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        assert after["idempotency"] == before["idempotency"], "a malformed request was stored"


async def test_price_times_quantity_overflowing_int64_is_invalid(
    ledger: Ledger, channel: grpc.aio.Channel, known: list[str]
) -> None:
    rich = known[0]
    # The hostile SetAgentPrice examples above may have changed the shared price: set it again.
    restore = apb.SetAgentPriceRequest(
        agent_id="maxed", price_micros=limits.AMOUNT_MICROS_MAX, unit="run", active=True
    )
    assert await code_of(channel, rpc_table.SET_AGENT_PRICE, restore) == grpc.StatusCode.OK
    before = await snapshot(ledger)
    for quantity in (2, 10**4, limits.QUANTITY_MAX, 2**62, 2**63 - 1):
        request = wpb.DebitRequest(
            user_id=rich, request_id=f"overflow-{quantity}", agent_id="maxed", quantity=quantity
        )
        assert await code_of(channel, rpc_table.DEBIT, request) == grpc.StatusCode.INVALID_ARGUMENT
    assert await snapshot(ledger) == before


async def test_oversized_message_is_refused_and_the_server_keeps_serving(
    ledger: Ledger, channel: grpc.aio.Channel, known: list[str]
) -> None:
    rich = known[0]
    huge = wpb.DebitRequest(
        user_id=rich,
        request_id="oversized",
        amount_micros=1,
        metadata={"blob": "x" * (limits.GRPC_MESSAGE_BYTES_MAX + 1)},
    )
    before = await snapshot(ledger)
    assert await code_of(channel, rpc_table.DEBIT, huge) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await snapshot(ledger) == before
    balance = wpb.GetBalanceRequest(user_id=rich)
    assert await code_of(channel, rpc_table.GET_BALANCE, balance) == grpc.StatusCode.OK
