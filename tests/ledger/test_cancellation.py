"""Callers that go away mid-debit: the call commits or rolls back on its own, all or nothing,
and no connection is left stuck in a transaction."""

from __future__ import annotations

import asyncio
import contextlib
import random

import grpc
import pytest
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.v1 import common_pb2 as pb
from creditwallet.v1 import wallet_service_pb2 as wpb
from creditwallet.v1 import wallet_service_pb2_grpc as wgrpc

from tests.harness import TOKENS, Ledger, new_user

pytestmark = pytest.mark.usefixtures("verified")

DEBITS = 1000
USERS = 20
CANCEL_AFTER_LOG10_SECONDS = (-4.0, -0.5)


async def test_cancelled_debits_apply_fully_or_not_at_all(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    rng = random.Random(1155)
    users = [new_user() for _ in range(USERS)]
    for user in users:
        await admin.ensure_account(user)
        await admin.grant(user, 1_000 * 1_000_000, pb.LOT_SOURCE_TOP_UP)
    metadata = (("authorization", f"Bearer {TOKENS['agent']}"),)
    requests = [
        wpb.DebitRequest(user_id=users[i % USERS], request_id=f"cancel-{i}", amount_micros=1_000)
        for i in range(DEBITS)
    ]
    async with grpc.aio.insecure_channel(ledger.target) as channel:
        stub = wgrpc.WalletServiceStub(channel)

        async def fire(request: wpb.DebitRequest) -> None:
            call = stub.Debit(request, metadata=metadata, timeout=10)
            # From 0.1 ms to 0.3 s, evenly on a log scale: on a fast machine most calls are
            # cancelled after their commit, on a loaded one most before it; both happen.
            await asyncio.sleep(10 ** rng.uniform(*CANCEL_AFTER_LOG10_SECONDS))
            call.cancel()
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
                await call

        for wave in range(0, DEBITS, 50):  # waves, so cancellations land at every stage
            await asyncio.gather(*(fire(r) for r in requests[wave : wave + 50]))
        await asyncio.sleep(0)  # let the server notice the last cancellations

    # Every shielded transaction finishes or rolls back; none is left open on the pool.
    for _ in range(100):
        async with ledger.pool.acquire() as conn:
            stuck = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND state LIKE 'idle in transaction%'"
            )
        busy = ledger.pool.get_size() - ledger.pool.get_idle_size()
        if stuck == 0 and busy == 0:
            break
        await asyncio.sleep(0.02)
    assert stuck == 0
    assert busy == 0

    # The retry with the same request_id tells the outcome: replayed means it had applied.
    applied = 0
    for request in requests:
        reply = await admin.debit(
            request.user_id, amount_micros=request.amount_micros, request_id=request.request_id
        )
        applied += reply.replayed
    async with ledger.pool.acquire() as conn:
        rows = await conn.fetchval(
            "SELECT count(*) FROM credit_transactions WHERE type = 'debit' AND request_id LIKE "
            "'cancel-%'"
        )
    assert rows == DEBITS  # each request applied exactly once in the end
    # The random moments must have hit both sides: before and after the commit.
    assert 0 < applied < DEBITS, applied
