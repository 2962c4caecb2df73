"""GetBalance as of a past moment is exact, expiries recorded late included.

Two twin accounts receive the same writes at the same moments. One is read at every
checkpoint, so each expiry is recorded as soon as it is due; the other is never read until the
end, so its expiries (a lot's, then a hold's whose credits went back to that expired lot) are
recorded long after they happened. The past balances of both, at every checkpoint, must be
what the first one showed live.
"""

from __future__ import annotations

import datetime as dt

import creditwallet.client.errors as cw
import pytest
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.v1 import common_pb2 as pb
from creditwallet.v1 import wallet_service_pb2 as wpb

from tests.harness import Ledger, new_user

pytestmark = pytest.mark.usefixtures("verified")

CREDIT = 1_000_000

Figures = tuple[int, int, int, int, tuple[tuple[int, int, int, int, tuple[str, ...]], ...]]


def figures(state: wpb.GetBalanceResponse) -> Figures:
    """What a balance says, without lot ids (the twins' lots have their own)."""
    lots = tuple(
        (lot.source, lot.amount_micros, lot.remaining_micros, lot.priority, tuple(lot.agent_ids))
        for g in state.lots
        for lot in g.lots
    )
    return (
        state.balance_micros,
        state.available_micros,
        state.held_micros,
        state.debt_micros,
        lots,
    )


async def new_account(admin: AsyncCreditWalletClient) -> str:
    user = new_user()
    await admin.grant(user, CREDIT, pb.LOT_SOURCE_ADJUSTMENT, create_account=True)
    await admin.debit(user, amount_micros=CREDIT)
    return user


async def test_past_balances_are_exact_however_late_expiries_were_recorded(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    clock = ledger.clock
    eager, lazy = await new_account(admin), await new_account(admin)
    twins = (eager, lazy)
    t0 = clock.now()
    checkpoints: list[tuple[dt.datetime, Figures]] = []

    async def checkpoint() -> None:
        checkpoints.append((clock.now(), figures(await admin.get_balance(eager))))

    for user in twins:
        await admin.grant(
            user, 5 * CREDIT, pb.LOT_SOURCE_PROMO, expires_at=t0 + dt.timedelta(seconds=10)
        )
        await admin.grant(user, 3 * CREDIT, pb.LOT_SOURCE_TOP_UP)
        await admin.grant(user, 2 * CREDIT, pb.LOT_SOURCE_PROMO, agent_ids=["asof-a"], priority=5)
        # Reserves 2 of the expiring lot, and outlives it: its credits come back expired.
        await admin.authorize(user, amount_micros=2 * CREDIT, ttl_seconds=30)
    await checkpoint()
    clock.set(t0 + dt.timedelta(seconds=5))
    for user in twins:
        await admin.debit(user, amount_micros=CREDIT)
        await admin.set_overdraft_limit(user, 4 * CREDIT)
    await checkpoint()
    clock.set(t0 + dt.timedelta(seconds=10))  # the lot expires now: 2 left in it, 2 held
    await checkpoint()
    clock.set(t0 + dt.timedelta(seconds=11))
    for user in twins:
        # Reserves 1 of the top-up until 16: back in that live lot from then on.
        await admin.authorize(user, amount_micros=CREDIT, ttl_seconds=5)
    await checkpoint()
    clock.set(t0 + dt.timedelta(seconds=20))
    await checkpoint()
    clock.set(t0 + dt.timedelta(seconds=30))  # the hold expires now; its 2 expire with it
    await checkpoint()
    clock.set(t0 + dt.timedelta(seconds=40))
    for user in twins:
        await admin.debit(user, amount_micros=5 * CREDIT)  # 3 from the top-up, 2 owed
    await checkpoint()
    clock.set(t0 + dt.timedelta(seconds=50))
    for user in twins:
        await admin.grant(user, 3 * CREDIT, pb.LOT_SOURCE_TOP_UP)  # pays the 2 owed
    await checkpoint()
    clock.set(t0 + dt.timedelta(seconds=60))
    for user in twins:
        await admin.debit(user, amount_micros=CREDIT, for_agent_id="asof-a")
    await checkpoint()

    live = dict(checkpoints)
    assert live[t0 + dt.timedelta(seconds=20)][2] == 2 * CREDIT  # still held
    assert live[t0 + dt.timedelta(seconds=30)][:4] == (5 * CREDIT, 5 * CREDIT, 0, 0)
    assert live[t0 + dt.timedelta(seconds=40)][3] == 2 * CREDIT
    for at, expected in checkpoints:
        for user in twins:
            past = await admin.get_balance(user, as_of=at)
            assert figures(past) == expected, (user == lazy, at - t0)
            assert past.as_of.ToDatetime(tzinfo=dt.UTC) == at
    # Moments between the writes, where nothing changed but an expiry.
    for seconds, balance, held in ((9, 9, 2), (10, 7, 2), (15, 7, 3), (16, 7, 2), (30, 5, 0)):
        past = await admin.get_balance(lazy, as_of=t0 + dt.timedelta(seconds=seconds))
        assert (past.balance_micros, past.held_micros) == (balance * CREDIT, held * CREDIT)


async def test_a_past_balance_for_an_agent_counts_the_lots_that_applied_then(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    user = await new_account(admin)
    t0 = ledger.clock.now()
    await admin.grant(user, 2 * CREDIT, pb.LOT_SOURCE_PROMO, agent_ids=["asof-b"])
    await admin.grant(user, CREDIT, pb.LOT_SOURCE_PROMO)
    ledger.clock.advance(seconds=5)
    await admin.debit(user, amount_micros=2 * CREDIT, for_agent_id="asof-b")
    then = await admin.get_balance(user, agent_id="asof-b", as_of=t0)
    assert then.available_for_agent_micros == 3 * CREDIT
    now = await admin.get_balance(user, agent_id="asof-b")
    assert now.available_for_agent_micros == CREDIT


async def test_as_of_in_the_future_is_refused_and_before_the_account_is_empty(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    user = await new_account(admin)
    with pytest.raises(cw.InvalidArgument) as refused:
        await admin.get_balance(user, as_of=ledger.clock.now() + dt.timedelta(seconds=1))
    assert refused.value.field == "as_of"
    before = await admin.get_balance(user, as_of=ledger.clock.now() - dt.timedelta(days=1))
    assert figures(before) == (0, 0, 0, 0, ())
    assert not before.HasField("streak")


async def test_as_of_shows_a_lot_with_the_expiry_in_force_then(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """A subscription lot's expiry corrected later (an anchor reset: an ``expiry_change`` row)
    is shown, as of a moment before the correction, with the expiry it had then."""
    from tests.billing import paid

    user = new_user()
    await admin.ensure_account(user)
    sub = f"sub_{user}"
    jan1 = dt.datetime(2031, 1, 1, tzinfo=dt.UTC)
    ledger.clock.set(jan1 + dt.timedelta(hours=1))
    await paid.paid(admin, sub, user, jan1, dt.datetime(2031, 2, 1, tzinfo=dt.UTC), 100, jan1)
    ledger.clock.set(dt.datetime(2031, 1, 15, tzinfo=dt.UTC))
    before = await admin.get_balance(user)
    moment = ledger.clock.now()
    ledger.clock.set(dt.datetime(2031, 1, 20, tzinfo=dt.UTC))
    reset = dt.datetime(2031, 1, 20, tzinfo=dt.UTC)
    await paid.paid(admin, sub, user, reset, dt.datetime(2031, 2, 20, tzinfo=dt.UTC), 100, reset)
    history = await admin.list_transactions(user, page_size=50)
    assert any(t.type == pb.TRANSACTION_TYPE_EXPIRY_CHANGE for t in history.transactions)
    then = await admin.get_balance(user, as_of=moment)

    def expiries(state: wpb.GetBalanceResponse) -> list[tuple[str, str]]:
        return [
            (lot.lot_id, lot.expires_at.ToJsonString())
            for group in state.lots
            for lot in group.lots
            if lot.source == pb.LOT_SOURCE_SUBSCRIPTION
        ]

    assert expiries(then) == expiries(before)
