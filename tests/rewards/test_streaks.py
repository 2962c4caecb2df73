"""Smart Streaks on the real server: milestones, the grace day, once per streak."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from creditwallet.client.errors import AccountNotFound
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.v1 import common_pb2

from tests.harness import Ledger, new_user

pytestmark = pytest.mark.usefixtures("verified")

CREDIT = 1_000_000
DEFAULT_REWARDS = {3: 1 * CREDIT, 7: 5 * CREDIT, 14: 10 * CREDIT, 30: 25 * CREDIT}


def before_month_end(ledger: Ledger, days: int) -> dt.datetime:
    """Move the clock forward to noon ``days`` days before the end of a coming month."""
    now = ledger.clock.now()
    first = (now.replace(day=1) + dt.timedelta(days=64)).replace(
        day=1, hour=12, minute=0, second=0, microsecond=0
    )
    start = first - dt.timedelta(days=days)
    ledger.clock.set(start)
    return start


async def funded_user(admin: AsyncCreditWalletClient) -> str:
    """A user with never-expiring credits, so a month of debits never runs dry."""
    user = new_user()
    await admin.ensure_account(user)
    await admin.grant(user, 1000 * CREDIT, common_pb2.LOT_SOURCE_TOP_UP)
    return user


async def active_days(
    ledger: Ledger, admin: AsyncCreditWalletClient, user: str, pattern: str
) -> dict[str, int]:
    """One debit per 'x' day, none on '.' days, from the clock's day on; returns
    {date: milestone} for the debits that carried a reward."""
    rewards: dict[str, int] = {}
    for mark in pattern:
        if mark == "x":
            result = await admin.debit(user, amount_micros=CREDIT)
            if result.HasField("streak_reward"):
                reward = result.streak_reward
                assert reward.amount_micros == DEFAULT_REWARDS[reward.milestone_days]
                rewards[ledger.clock.now().date().isoformat()] = reward.milestone_days
        ledger.clock.advance(days=1)
    ledger.clock.advance(days=-1)  # stay on the last day of the pattern
    return rewards


async def streak_lots(ledger: Ledger, user: str) -> list[tuple[int, int]]:
    async with ledger.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT milestone_days, reward_micros FROM streak_milestones "
            "WHERE user_id = $1 ORDER BY granted_at, milestone_days",
            user,
        )
        grants = await conn.fetchval(
            "SELECT count(*) FROM credit_lots WHERE user_id = $1 AND source = 'streak'", user
        )
    assert grants == len(rows)
    return [(r["milestone_days"], r["reward_micros"]) for r in rows]


async def test_milestones_across_month_end_without_grace(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    start = before_month_end(ledger, 2)  # the 3rd active day is the 1st of the next month
    user = await funded_user(admin)
    rewards = await active_days(ledger, admin, user, "x" * 31)
    day = [(start + dt.timedelta(days=n)).date().isoformat() for n in range(31)]
    assert day[2].endswith("-01")
    assert rewards == {day[2]: 3, day[6]: 7, day[13]: 14, day[29]: 30}
    streak = (await admin.get_streak(user)).streak
    assert (streak.current_days, streak.longest_days) == (31, 31)
    assert (streak.next_milestone_days, streak.next_milestone_reward_micros) == (0, 0)
    assert not streak.grace_day_used
    assert streak.last_active_date == day[30]
    balance = await admin.get_balance(user)
    assert balance.streak == streak
    assert await streak_lots(ledger, user) == sorted(DEFAULT_REWARDS.items())
    # Streak lots expire before the top-up, so the debits burnt them first.
    streak_group = [g for g in balance.lots if g.source == common_pb2.LOT_SOURCE_STREAK]
    for lot in streak_group[0].lots:  # 90-day lots
        lifetime = lot.expires_at.ToDatetime() - lot.granted_at.ToDatetime()
        assert lifetime == dt.timedelta(days=90)


async def test_grace_day_across_month_end(ledger: Ledger, admin: AsyncCreditWalletClient) -> None:
    start = before_month_end(ledger, 2)  # active 2 days, miss the 1st, active from the 2nd
    user = await funded_user(admin)
    rewards = await active_days(ledger, admin, user, "xx.x")
    assert rewards == {(start + dt.timedelta(days=3)).date().isoformat(): 3}
    streak = (await admin.get_streak(user)).streak
    assert (streak.current_days, streak.grace_day_used, streak.next_milestone_days) == (3, True, 7)
    ledger.clock.advance(days=1)
    rewards = await active_days(ledger, admin, user, "xxxx")  # 7 active days in 8
    assert list(rewards.values()) == [7]
    streak = (await admin.get_streak(user)).streak
    assert (streak.current_days, streak.grace_day_used) == (7, True)
    ledger.clock.advance(days=2)  # miss a day 6 days after the forgiven one: the streak ends
    assert (await admin.get_streak(user)).streak.current_days == 0
    rewards = await active_days(ledger, admin, user, "x")
    streak = (await admin.get_streak(user)).streak
    assert (streak.current_days, streak.longest_days, streak.grace_day_used) == (1, 7, False)
    assert rewards == {}
    assert await streak_lots(ledger, user) == [(3, 1 * CREDIT), (7, 5 * CREDIT)]


async def test_two_forgiven_days_seven_apart_keep_the_streak(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    before_month_end(ledger, 5)
    user = await funded_user(admin)
    rewards = await active_days(ledger, admin, user, "xx.xxxxxx.xxxxxx")
    assert sorted(rewards.values()) == [3, 7, 14]
    streak = (await admin.get_streak(user)).streak
    # The last forgiven day (index 9) is 7 days before the next possible miss (16).
    assert (streak.current_days, streak.grace_day_used) == (14, False)


async def test_missed_days_read_as_a_broken_streak(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    before_month_end(ledger, 10)
    user = await funded_user(admin)
    await active_days(ledger, admin, user, "xxxx")
    ledger.clock.advance(days=2)  # yesterday missed: pending grace, still alive
    streak = (await admin.get_streak(user)).streak
    assert (streak.current_days, streak.grace_day_used) == (4, True)
    ledger.clock.advance(days=1)  # two missed days: broken, before any new debit
    streak = (await admin.get_streak(user)).streak
    assert (streak.current_days, streak.longest_days, streak.next_milestone_days) == (0, 4, 3)


async def test_a_new_streak_earns_milestones_again(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    before_month_end(ledger, 1)
    user = await funded_user(admin)
    first = await active_days(ledger, admin, user, "xxxx...xxx")
    assert sorted(first.values()) == [3, 3]
    assert await streak_lots(ledger, user) == [(3, CREDIT), (3, CREDIT)]


async def test_concurrent_debits_on_milestone_day_reward_once(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    before_month_end(ledger, 1)
    user = await funded_user(admin)
    await active_days(ledger, admin, user, "xx")
    ledger.clock.advance(days=1)
    ids = [f"milestone-{user}-{n}" for n in range(24)]
    results = await asyncio.gather(
        *(admin.debit(user, amount_micros=CREDIT, request_id=i) for i in ids)
    )
    rewarded = [(i, r) for i, r in zip(ids, results, strict=True) if r.HasField("streak_reward")]
    assert len(rewarded) == 1
    assert rewarded[0][1].streak_reward.milestone_days == 3
    replay = await admin.debit(user, amount_micros=CREDIT, request_id=rewarded[0][0])
    assert replay.replayed
    assert replay.streak_reward == rewarded[0][1].streak_reward
    assert await streak_lots(ledger, user) == [(3, CREDIT)]
    streak = (await admin.get_streak(user)).streak
    assert streak.current_days == 3
    async with ledger.pool.acquire() as conn:
        count = await conn.fetchval(
            "SELECT debit_count FROM user_activity WHERE user_id = $1 AND day = $2",
            user,
            ledger.clock.now().date(),
        )
    assert count == 24


async def test_capture_counts_as_activity(ledger: Ledger, admin: AsyncCreditWalletClient) -> None:
    before_month_end(ledger, 3)
    user = await funded_user(admin)
    await active_days(ledger, admin, user, "xx")
    ledger.clock.advance(days=1)
    hold = await admin.authorize(user, amount_micros=2 * CREDIT)
    captured = await admin.capture(user, hold.hold_id, amount_micros=CREDIT)
    assert captured.streak_reward.milestone_days == 3


async def test_milestones_are_configurable(ledger: Ledger, admin: AsyncCreditWalletClient) -> None:
    before_month_end(ledger, 3)
    user = await funded_user(admin)
    async with ledger.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO streak_milestone_rewards (milestone_days, reward_micros) "
            "VALUES (2, 500000)"
        )
    try:
        assert (await admin.get_streak(user)).streak.next_milestone_days == 2
        first = await admin.debit(user, amount_micros=CREDIT)
        assert not first.HasField("streak_reward")
        ledger.clock.advance(days=1)
        second = await admin.debit(user, amount_micros=CREDIT)
        assert (second.streak_reward.milestone_days, second.streak_reward.amount_micros) == (
            2,
            500_000,
        )
    finally:
        async with ledger.pool.acquire() as conn:
            await conn.execute("DELETE FROM streak_milestone_rewards WHERE milestone_days = 2")


async def test_get_streak_of_a_new_and_an_unknown_account(
    admin: AsyncCreditWalletClient, agent: AsyncCreditWalletClient
) -> None:
    user = new_user()
    await admin.ensure_account(user)
    streak = (await agent.get_streak(user)).streak
    assert (streak.current_days, streak.longest_days, streak.last_active_date) == (0, 0, "")
    assert (streak.next_milestone_days, streak.next_milestone_reward_micros) == (3, CREDIT)
    with pytest.raises(AccountNotFound):
        await agent.get_streak(new_user())


async def test_verify_ledger_flags_a_reward_without_its_lot(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    user = await funded_user(admin)
    async with ledger.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO streak_milestones (user_id, streak_start, milestone_days, "
            "reward_micros, transaction_id, granted_at) VALUES ($1, $2, 3, 1, -1, $3)",
            user,
            ledger.clock.now().date(),
            ledger.clock.now(),
        )
    try:
        report = await admin.verify_ledger()
        assert [(v.invariant, v.user_id) for v in report.violations] == [(3, user)]
    finally:
        async with ledger.pool.acquire() as conn:
            await conn.execute("DELETE FROM streak_milestones WHERE user_id = $1", user)
