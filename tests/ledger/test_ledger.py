"""The ledger core over gRPC on real PostgreSQL: trial, pricing, burn-down, holds, reversal."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from creditwallet.client import errors as cw
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.v1 import common_pb2 as pb

from tests.harness import Ledger, new_user

pytestmark = pytest.mark.usefixtures("verified")

CREDIT = 1_000_000


async def balance(client: AsyncCreditWalletClient, user: str) -> int:
    return (await client.get_balance(user)).available_micros


async def test_trial_granted_once_even_when_ensured_concurrently(
    admin: AsyncCreditWalletClient,
) -> None:
    user = new_user()
    results = await asyncio.gather(*(admin.ensure_account(user) for _ in range(10)))
    assert sum(r.created for r in results) == 1
    assert all(r.balance.available_micros == 5 * CREDIT for r in results)
    again = await admin.ensure_account(user)
    assert not again.created
    page = await admin.list_transactions(user)
    assert [(t.type, t.source, t.amount_micros) for t in page.transactions] == [
        (pb.TRANSACTION_TYPE_GRANT, pb.LOT_SOURCE_TRIAL, 5 * CREDIT)
    ]


async def test_debit_charges_price_times_quantity(admin: AsyncCreditWalletClient) -> None:
    user = new_user()
    await admin.ensure_account(user)
    await admin.set_agent_price("summarizer", 250_000, unit="run")
    result = await admin.debit(user, agent_id="summarizer", quantity=3)
    assert result.charged_micros == 750_000
    assert result.available_micros == 5 * CREDIT - 750_000
    one = await admin.debit(user, agent_id="summarizer")
    assert one.charged_micros == 250_000
    row = (await admin.list_transactions(user, page_size=1)).transactions[0]
    assert (row.agent_id, row.quantity, row.amount_micros) == ("summarizer", 1, -250_000)


async def test_burn_down_spends_soonest_expiring_first_then_oldest(
    admin: AsyncCreditWalletClient, ledger: Ledger
) -> None:
    user = new_user()
    await admin.ensure_account(user)  # trial: 5 credits, expires in 30 days
    now = ledger.clock.now()
    await admin.grant(user, 10 * CREDIT, pb.LOT_SOURCE_TOP_UP)  # never expires
    await admin.grant(user, 2 * CREDIT, pb.LOT_SOURCE_PROMO, expires_at=now + dt.timedelta(days=3))
    await admin.grant(user, 1 * CREDIT, pb.LOT_SOURCE_PROMO, expires_at=now + dt.timedelta(days=3))
    # 2 (promo, oldest of the two day-3 lots) + 1 (promo) + 1 of the trial.
    await admin.debit(user, amount_micros=4 * CREDIT)
    lots = {g.source: g for g in (await admin.get_balance(user)).lots}
    assert pb.LOT_SOURCE_PROMO not in lots
    assert lots[pb.LOT_SOURCE_TRIAL].remaining_micros == 4 * CREDIT
    assert lots[pb.LOT_SOURCE_TOP_UP].remaining_micros == 10 * CREDIT
    # Groups come in burn-down order: the trial (30 days) before the top-up (never).
    assert [g.source for g in (await admin.get_balance(user)).lots] == [
        pb.LOT_SOURCE_TRIAL,
        pb.LOT_SOURCE_TOP_UP,
    ]


async def test_burn_down_breaks_ties_by_the_oldest_grant(
    admin: AsyncCreditWalletClient, ledger: Ledger
) -> None:
    """Same expiry (or none): the lot granted first is spent first, and only it."""
    user = new_user()
    expiry = ledger.clock.now() + dt.timedelta(days=3)
    first = await admin.grant(
        user, 2 * CREDIT, pb.LOT_SOURCE_PROMO, expires_at=expiry, create_account=True
    )
    ledger.clock.advance(minutes=1)
    second = await admin.grant(user, 2 * CREDIT, pb.LOT_SOURCE_PROMO, expires_at=expiry)
    older_top_up = await admin.grant(user, 2 * CREDIT, pb.LOT_SOURCE_TOP_UP)
    ledger.clock.advance(minutes=1)
    newer_top_up = await admin.grant(user, 2 * CREDIT, pb.LOT_SOURCE_TOP_UP)

    async def remaining() -> dict[str, int]:
        lots = (await admin.get_balance(user)).lots
        return {lot.lot_id: lot.remaining_micros for group in lots for lot in group.lots}

    await admin.debit(user, amount_micros=CREDIT)
    assert await remaining() == {
        first.lot.lot_id: CREDIT,
        second.lot.lot_id: 2 * CREDIT,
        older_top_up.lot.lot_id: 2 * CREDIT,
        newer_top_up.lot.lot_id: 2 * CREDIT,
    }
    await admin.debit(user, amount_micros=4 * CREDIT)  # 1 + 2 expiring, then 1 of the older
    assert await remaining() == {
        older_top_up.lot.lot_id: CREDIT,
        newer_top_up.lot.lot_id: 2 * CREDIT,
    }


async def test_expired_lot_is_never_spendable_and_expiry_is_recorded_once(
    admin: AsyncCreditWalletClient, ledger: Ledger
) -> None:
    user = new_user()
    await admin.ensure_account(user)
    await admin.grant(user, 1 * CREDIT, pb.LOT_SOURCE_TOP_UP)
    ledger.clock.advance(days=30, seconds=1)  # the module's clock only moves forward
    with pytest.raises(cw.InsufficientCredits) as refused:
        await admin.debit(user, amount_micros=2 * CREDIT)
    assert refused.value.available_micros == 1 * CREDIT
    assert await balance(admin, user) == 1 * CREDIT
    expires = await admin.list_transactions(user, type=pb.TRANSACTION_TYPE_EXPIRE)
    assert [(t.source, t.amount_micros) for t in expires.transactions] == [
        (pb.LOT_SOURCE_TRIAL, -5 * CREDIT)
    ]


async def test_concurrent_debits_on_one_account_never_overdraw(
    admin: AsyncCreditWalletClient, ledger: Ledger
) -> None:
    user = new_user()
    await admin.ensure_account(user)
    await admin.grant(user, 45 * CREDIT, pb.LOT_SOURCE_TOP_UP)  # 50 credits in all
    clients = [ledger.client("agent") for _ in range(8)]

    async def spend(i: int) -> bool:
        try:
            await clients[i % len(clients)].debit(user, amount_micros=CREDIT, request_id=f"c-{i}")
        except cw.InsufficientCredits:
            return False
        return True

    outcomes = await asyncio.gather(*(spend(i) for i in range(150)))
    assert sum(outcomes) == 50
    assert await balance(admin, user) == 0
    debits = await admin.list_transactions(user, page_size=500, type=pb.TRANSACTION_TYPE_DEBIT)
    assert len(debits.transactions) == 50
    assert sum(t.amount_micros for t in debits.transactions) == -50 * CREDIT


async def test_one_request_id_from_twenty_callers_is_applied_once(
    admin: AsyncCreditWalletClient, ledger: Ledger
) -> None:
    user = new_user()
    await admin.ensure_account(user)
    clients = [ledger.client("agent") for _ in range(20)]
    results = await asyncio.gather(
        *(c.debit(user, amount_micros=CREDIT, request_id="same-key") for c in clients)
    )
    assert len({r.transaction_id for r in results}) == 1
    assert sum(not r.replayed for r in results) == 1
    assert await balance(admin, user) == 4 * CREDIT


async def test_replay_returns_original_and_reuse_is_refused(admin: AsyncCreditWalletClient) -> None:
    user = new_user()
    await admin.ensure_account(user)
    first = await admin.debit(user, amount_micros=CREDIT, request_id="r1")
    again = await admin.debit(user, amount_micros=CREDIT, request_id="r1")
    assert again.replayed
    assert again.transaction_id == first.transaction_id
    assert again.available_micros == first.available_micros
    with pytest.raises(cw.RequestIdReused):
        await admin.debit(user, amount_micros=2 * CREDIT, request_id="r1")
    assert await balance(admin, user) == 4 * CREDIT


async def test_state_dependent_refusal_is_stored_under_its_request_id(
    admin: AsyncCreditWalletClient,
) -> None:
    user = new_user()
    await admin.ensure_account(user)
    with pytest.raises(cw.InsufficientCredits) as first:
        await admin.debit(user, amount_micros=6 * CREDIT, request_id="big")
    assert (first.value.available_micros, first.value.required_micros) == (5 * CREDIT, 6 * CREDIT)
    await admin.grant(user, 10 * CREDIT, pb.LOT_SOURCE_TOP_UP)
    with pytest.raises(cw.InsufficientCredits):
        await admin.debit(user, amount_micros=6 * CREDIT, request_id="big")
    ok = await admin.debit(user, amount_micros=6 * CREDIT, request_id="big-2")
    assert ok.available_micros == 9 * CREDIT


async def test_malformed_request_is_not_stored(admin: AsyncCreditWalletClient) -> None:
    user = new_user()
    await admin.ensure_account(user)
    with pytest.raises(cw.InvalidArgument):
        await admin.debit(user, amount_micros=0, request_id="fix-me")
    ok = await admin.debit(user, amount_micros=CREDIT, request_id="fix-me")
    assert not ok.replayed


async def test_hold_capture_less_than_held_releases_the_rest(
    admin: AsyncCreditWalletClient,
) -> None:
    user = new_user()
    await admin.ensure_account(user)
    hold = await admin.authorize(user, amount_micros=3 * CREDIT, ttl_seconds=60)
    assert hold.available_micros == 2 * CREDIT
    state = await admin.get_balance(user)
    assert (state.available_micros, state.held_micros) == (2 * CREDIT, 3 * CREDIT)
    captured = await admin.capture(user, hold.hold_id, amount_micros=CREDIT)
    assert (captured.charged_micros, captured.released_micros) == (CREDIT, 2 * CREDIT)
    assert captured.available_micros == 4 * CREDIT
    with pytest.raises(cw.HoldFinalized):
        await admin.capture(user, hold.hold_id)
    with pytest.raises(cw.HoldFinalized):
        await admin.void(user, hold.hold_id)
    debit = (await admin.list_transactions(user, page_size=1)).transactions[0]
    assert (debit.type, debit.amount_micros, debit.hold_id) == (
        pb.TRANSACTION_TYPE_DEBIT,
        -CREDIT,
        hold.hold_id,
    )


async def test_hold_void_gives_everything_back(admin: AsyncCreditWalletClient) -> None:
    user = new_user()
    await admin.ensure_account(user)
    hold = await admin.authorize(user, amount_micros=5 * CREDIT)
    with pytest.raises(cw.InsufficientCredits):
        await admin.debit(user, amount_micros=1)
    voided = await admin.void(user, hold.hold_id, request_id="v1")
    assert (voided.released_micros, voided.available_micros) == (5 * CREDIT, 5 * CREDIT)
    replay = await admin.void(user, hold.hold_id, request_id="v1")
    assert replay.replayed
    state = await admin.get_balance(user)
    assert (state.available_micros, state.held_micros) == (5 * CREDIT, 0)


async def test_expired_hold_is_released_without_any_sweeper(
    admin: AsyncCreditWalletClient, ledger: Ledger
) -> None:
    user = new_user()
    await admin.ensure_account(user)
    hold = await admin.authorize(user, amount_micros=4 * CREDIT, ttl_seconds=30)
    ledger.clock.advance(seconds=31)
    state = await admin.get_balance(user)
    assert (state.available_micros, state.held_micros) == (5 * CREDIT, 0)
    with pytest.raises(cw.HoldExpired):
        await admin.capture(user, hold.hold_id)


async def test_reverse_debit_returns_credits_to_their_lots(
    admin: AsyncCreditWalletClient, ledger: Ledger
) -> None:
    user = new_user()
    await admin.ensure_account(user)
    await admin.grant(user, 10 * CREDIT, pb.LOT_SOURCE_TOP_UP)
    spent = await admin.debit(user, amount_micros=7 * CREDIT)  # 5 trial + 2 top-up
    part = await admin.reverse_debit(user, spent.transaction_id, amount_micros=3 * CREDIT)
    assert part.reversed_micros == 3 * CREDIT
    lots = {g.source: g.remaining_micros for g in (await admin.get_balance(user)).lots}
    # The longest-lived lot is refilled first: 2 back to the top-up, then 1 to the trial.
    assert lots == {pb.LOT_SOURCE_TRIAL: CREDIT, pb.LOT_SOURCE_TOP_UP: 10 * CREDIT}
    rest = await admin.reverse_debit(user, spent.transaction_id)
    assert rest.reversed_micros == 4 * CREDIT
    assert rest.available_micros == 15 * CREDIT
    with pytest.raises(cw.FailedPrecondition):
        await admin.reverse_debit(user, spent.transaction_id)
    with pytest.raises(cw.TransactionNotFound):
        await admin.reverse_debit(user, "999999999")


async def test_agent_disabled_and_unknown(admin: AsyncCreditWalletClient) -> None:
    user = new_user()
    await admin.ensure_account(user)
    await admin.set_agent_price("retired-agent", CREDIT, active=False)
    with pytest.raises(cw.AgentDisabled):
        await admin.debit(user, agent_id="retired-agent")
    with pytest.raises(cw.AgentNotFound):
        await admin.debit(user, agent_id="no-such-agent")
    prices = await admin.list_agent_prices()
    assert "retired-agent" in [p.agent_id for p in prices.prices]
    assert await balance(admin, user) == 5 * CREDIT


async def test_rollover_purges_idempotency_records_past_retention(
    admin: AsyncCreditWalletClient, ledger: Ledger
) -> None:
    user = new_user()
    await admin.ensure_account(user)
    recent = await admin.debit(user, amount_micros=CREDIT, request_id="keep-me")
    old = ledger.clock.now() - dt.timedelta(days=31)
    async with ledger.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO idempotency_records (user_id, request_id, method, request_hash, "
            "result, created_at) VALUES ($1, 'ancient', 'Debit', '\\x00', '{}', $2)",
            user,
            old,
        )
    await admin.rollover()
    async with ledger.pool.acquire() as conn:
        keys = await conn.fetch(
            "SELECT request_id FROM idempotency_records WHERE user_id = $1", user
        )
    assert [k["request_id"] for k in keys] == ["keep-me"]
    again = await admin.debit(user, amount_micros=CREDIT, request_id="keep-me")
    assert again.replayed
    assert again.transaction_id == recent.transaction_id
