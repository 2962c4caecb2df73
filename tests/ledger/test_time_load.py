"""Concurrent load while lots expire milliseconds apart and credits keep coming back.

Many callers debit, hold, capture part, void and reverse on a few accounts whose lots expire
one millisecond after another, while the clock moves on by itself. Whatever interleaving the
machine produces, no call may fail with INTERNAL, every balance read must add up, and
VerifyLedger (expiry, time order and stored replies included) must be clean afterwards.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random

import pytest
from creditwallet.client import errors as cw
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.v1 import common_pb2 as pb

from tests.harness import Ledger, new_user

CREDIT = 1_000_000
ACCOUNTS = 6
LOTS_PER_ACCOUNT = 40
CALLERS = 12
STEPS_PER_CALLER = 40
TICK_MILLISECONDS = 1
TICK_PAUSE_SECONDS = 0.002
SEED = 20261201

# Refusals the load is expected to meet; anything else (INTERNAL above all) fails the test.
EXPECTED = (
    cw.InsufficientCredits,
    cw.HoldExpired,
    cw.HoldFinalized,
    cw.ReversalExceedsDebit,
)


async def test_expiring_lots_under_concurrent_load(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    start = ledger.clock.now()
    users = [new_user() for _ in range(ACCOUNTS)]
    for u, user in enumerate(users):
        await admin.grant(user, 10 * CREDIT, pb.LOT_SOURCE_TOP_UP, create_account=True)
        for k in range(LOTS_PER_ACCOUNT):
            expires_at = start + dt.timedelta(milliseconds=20 + k * ACCOUNTS + u)
            await admin.grant(user, CREDIT, pb.LOT_SOURCE_PROMO, expires_at=expires_at)
    clients = [ledger.client("admin") for _ in range(4)]
    done = asyncio.Event()
    outcomes: dict[str, int] = {}

    async def tick() -> None:
        while not done.is_set():
            ledger.clock.advance(milliseconds=TICK_MILLISECONDS)
            await asyncio.sleep(TICK_PAUSE_SECONDS)

    async def caller(index: int) -> None:
        rng = random.Random(SEED + index)
        client = clients[index % len(clients)]
        for _ in range(STEPS_PER_CALLER):
            user = rng.choice(users)
            amount = rng.randint(1, 3) * CREDIT // 2
            kind = rng.choice(("debit", "capture", "void", "reverse", "read"))
            try:
                if kind == "debit":
                    await client.debit(user, amount_micros=amount)
                elif kind in ("capture", "void"):
                    hold = await client.authorize(user, amount_micros=amount, ttl_seconds=1)
                    await asyncio.sleep(rng.random() * 0.01)
                    if kind == "capture":
                        await client.capture(user, hold.hold_id, amount_micros=amount // 2 or None)
                    else:
                        await client.void(user, hold.hold_id)
                elif kind == "reverse":
                    spent = await client.debit(user, amount_micros=amount)
                    await asyncio.sleep(rng.random() * 0.01)
                    await client.reverse_debit(user, spent.transaction_id)
                else:
                    balance = await client.get_balance(user)
                    lots = sum(g.remaining_micros for g in balance.lots)
                    assert balance.available_micros == lots - balance.debt_micros
                outcomes[kind] = outcomes.get(kind, 0) + 1
            except EXPECTED as refusal:
                outcomes[refusal.reason] = outcomes.get(refusal.reason, 0) + 1

    ticker = asyncio.ensure_future(tick())
    try:
        await asyncio.gather(*(caller(i) for i in range(CALLERS)))
    finally:
        done.set()
        await ticker
    elapsed = ledger.clock.now() - start
    report = await admin.verify_ledger()
    assert report.ok, [f"{v.invariant} {v.user_id}: {v.detail}" for v in report.violations]
    expired = 0
    for user in users:
        history = await admin.list_transactions(
            user, page_size=500, type=pb.TRANSACTION_TYPE_EXPIRE
        )
        expired += len(history.transactions)
    assert expired > 0, "no lot expired during the load: the case was not exercised"
    assert elapsed > dt.timedelta(milliseconds=20), "the clock did not move during the load"
    print(
        f"\ntime load: {sum(outcomes.values())} calls in {elapsed} of ledger time, "
        f"{expired} expire rows; " + ", ".join(f"{k}={v}" for k, v in sorted(outcomes.items()))
    )


pytestmark = pytest.mark.usefixtures("verified")
