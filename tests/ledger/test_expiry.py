"""Lot expiry (docs/rewards.md): exact at read and debit time, recorded once as ``expire``."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable

import pytest
from creditwallet.client.errors import CreditWalletError, InsufficientCredits
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.v1 import common_pb2, wallet_service_pb2

from tests.harness import Ledger, new_user

pytestmark = pytest.mark.usefixtures("verified")

CREDIT = 1_000_000
EXPIRE = common_pb2.TRANSACTION_TYPE_EXPIRE


async def expiries(admin: AsyncCreditWalletClient, user: str) -> list[tuple[int, int]]:
    page = await admin.list_transactions(user, type=EXPIRE)
    return [(t.source, t.amount_micros) for t in page.transactions]


def remaining_by_source(balance: wallet_service_pb2.GetBalanceResponse) -> dict[int, int]:
    return {g.source: g.remaining_micros for g in balance.lots}


async def test_trial_lot_expires_after_30_days_and_is_recorded_once(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    user = new_user()
    await admin.ensure_account(user)
    trial = (await admin.get_balance(user)).lots[0].lots[0]
    assert trial.expires_at.ToDatetime() - trial.granted_at.ToDatetime() == dt.timedelta(days=30)
    ledger.clock.advance(days=30, seconds=-1)
    assert (await admin.debit(user, amount_micros=CREDIT)).available_micros == 4 * CREDIT
    ledger.clock.advance(seconds=1)
    for _ in range(2):
        balance = await admin.get_balance(user)
        assert (balance.available_micros, list(balance.lots)) == (0, [])
        assert await expiries(admin, user) == [(common_pb2.LOT_SOURCE_TRIAL, -4 * CREDIT)]
    with pytest.raises(InsufficientCredits) as refused:
        await admin.debit(user, amount_micros=1)
    assert refused.value.metadata["available_micros"] == "0"
    assert len(await expiries(admin, user)) == 1


async def test_expired_credits_are_never_spendable_before_any_sweep(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    user = new_user()
    await admin.ensure_account(user)
    await admin.grant(user, 2 * CREDIT, common_pb2.LOT_SOURCE_TOP_UP)
    ledger.clock.advance(days=31)
    assert await expiries(admin, user) == []  # nothing has recorded the expiry yet
    with pytest.raises(InsufficientCredits) as refused:
        await admin.debit(user, amount_micros=3 * CREDIT)
    assert refused.value.metadata["available_micros"] == str(2 * CREDIT)
    # Even the refused debit was a touch: the expiry it found is recorded (it is true
    # whether the debit goes on or not), once.
    assert await expiries(admin, user) == [(common_pb2.LOT_SOURCE_TRIAL, -5 * CREDIT)]
    spent = await admin.debit(user, amount_micros=2 * CREDIT)
    assert spent.available_micros == 0
    await admin.get_balance(user)
    assert len(await expiries(admin, user)) == 1


async def test_a_successful_debit_records_the_expiry_it_finds(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    user = new_user()
    await admin.ensure_account(user)
    await admin.grant(user, 2 * CREDIT, common_pb2.LOT_SOURCE_TOP_UP)
    ledger.clock.advance(days=30)
    assert (await admin.debit(user, amount_micros=CREDIT)).available_micros == CREDIT
    assert await expiries(admin, user) == [(common_pb2.LOT_SOURCE_TRIAL, -5 * CREDIT)]


async def test_burn_down_prefers_the_soonest_expiring_lot(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    user = new_user()
    await admin.ensure_account(user)  # trial: 5 credits, 30 days
    now = ledger.clock.now()
    await admin.grant(user, 10 * CREDIT, common_pb2.LOT_SOURCE_TOP_UP)  # never expires
    await admin.grant(
        user, 3 * CREDIT, common_pb2.LOT_SOURCE_PROMO, expires_at=now + dt.timedelta(days=10)
    )
    await admin.debit(user, amount_micros=4 * CREDIT)  # promo 3, then trial 1
    left = remaining_by_source(await admin.get_balance(user))
    assert left == {
        common_pb2.LOT_SOURCE_TRIAL: 4 * CREDIT,
        common_pb2.LOT_SOURCE_TOP_UP: 10 * CREDIT,
    }
    await admin.debit(user, amount_micros=5 * CREDIT)  # trial 4, then the top-up 1
    balance = await admin.get_balance(user)
    assert remaining_by_source(balance) == {common_pb2.LOT_SOURCE_TOP_UP: 9 * CREDIT}
    ledger.clock.advance(days=40)
    assert (await admin.get_balance(user)).available_micros == 9 * CREDIT
    assert await expiries(admin, user) == []  # spent lots leave nothing to expire


async def test_concurrent_touches_record_an_expiry_once(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    user = new_user()
    await admin.ensure_account(user)
    await admin.grant(user, CREDIT, common_pb2.LOT_SOURCE_TOP_UP)
    ledger.clock.advance(days=30)
    touches: list[Awaitable[object]] = [admin.get_balance(user) for _ in range(10)]
    touches += [admin.debit(user, amount_micros=CREDIT // 10) for _ in range(5)]
    outcomes = await asyncio.gather(*touches, return_exceptions=True)
    assert not [o for o in outcomes if isinstance(o, CreditWalletError)]
    assert await expiries(admin, user) == [(common_pb2.LOT_SOURCE_TRIAL, -5 * CREDIT)]
    assert (await admin.get_balance(user)).available_micros == CREDIT // 2


async def test_streak_and_referral_lots_expire_after_90_days(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    referrer = new_user()
    await admin.ensure_account(referrer)
    code = (await admin.get_referral_code(referrer)).code
    user = new_user()
    await admin.ensure_account(user, referral_code=code)
    await admin.grant(user, 100 * CREDIT, common_pb2.LOT_SOURCE_TOP_UP)
    for day in range(3):
        result = await admin.debit(user, amount_micros=CREDIT)
        if day < 2:
            ledger.clock.advance(days=1)
    assert result.streak_reward.milestone_days == 3
    # The three debits burnt the trial (expires first); the streak and referral lots are whole.
    left = remaining_by_source(await admin.get_balance(user))
    assert left[common_pb2.LOT_SOURCE_STREAK] == CREDIT
    assert left[common_pb2.LOT_SOURCE_REFERRAL] == 10 * CREDIT
    ledger.clock.advance(days=88, seconds=-1)  # the referral lot was granted 2 days earlier
    left = remaining_by_source(await admin.get_balance(user))
    assert common_pb2.LOT_SOURCE_REFERRAL in left
    ledger.clock.advance(seconds=1)
    left = remaining_by_source(await admin.get_balance(user))
    assert common_pb2.LOT_SOURCE_REFERRAL not in left
    assert common_pb2.LOT_SOURCE_STREAK in left
    ledger.clock.advance(days=2)
    balance = await admin.get_balance(user)
    assert remaining_by_source(balance) == {common_pb2.LOT_SOURCE_TOP_UP: 100 * CREDIT}
    assert sorted(await expiries(admin, user)) == sorted(
        [
            (common_pb2.LOT_SOURCE_TRIAL, -2 * CREDIT),
            (common_pb2.LOT_SOURCE_REFERRAL, -10 * CREDIT),
            (common_pb2.LOT_SOURCE_STREAK, -CREDIT),
        ]
    )
