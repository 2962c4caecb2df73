"""Subscription periods, carry-over, cap and expiry, and the chunked monthly rollover.

The scenario is computed by hand (see the comments); this module has its own database, and
the first test is the only one whose accounts exist when it runs, so its summaries are exact.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import pytest
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.server.ledger import rollover
from creditwallet.v1 import billing_service_pb2 as bpb
from creditwallet.v1 import common_pb2 as pb
from google.protobuf import timestamp_pb2

from tests.harness import Ledger, new_user

pytestmark = pytest.mark.usefixtures("verified")

CREDIT = 1_000_000
UTC = dt.UTC


def at(month: int, day: int, hour: int = 10) -> dt.datetime:
    return dt.datetime(2027, month, day, hour, tzinfo=UTC)


def ts(value: dt.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


async def pay(
    billing: AsyncCreditWalletClient,
    user: str,
    sub: str,
    start: dt.datetime,
    end: dt.datetime,
    event_at: dt.datetime,
    credits: int = 250,
) -> bpb.SyncSubscriptionResponse:
    request = bpb.SyncSubscriptionRequest(
        request_id=f"evt_{uuid.uuid4().hex}",
        subscription_id=sub,
        customer_id="cus_" + sub,
        user_id=user,
        status=pb.SUBSCRIPTION_STATUS_ACTIVE,
        price_id="price_cw_monthly_250",
        period_credits_micros=credits * CREDIT,
        current_period_start=ts(start),
        current_period_end=ts(end),
        event_created_at=ts(event_at),
        paid_period=bpb.PaidPeriod(
            period_start=ts(start),
            period_end=ts(end),
            payment_id=f"pi_{uuid.uuid4().hex}",
            amount_paid_minor=999,
            currency="usd",
        ),
    )
    return await billing.billing.SyncSubscription(request)


async def expiries(admin: AsyncCreditWalletClient, user: str) -> list[int]:
    page = await admin.list_transactions(user, page_size=100)
    rows = [t for t in page.transactions if t.type == pb.TRANSACTION_TYPE_EXPIRE]
    return [t.amount_micros // CREDIT for t in reversed(rows)]


async def test_periods_from_the_31st_late_renewal_cap_and_rollover(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    billing = ledger.client("billing")
    user, sub = new_user(), "sub_31st"
    clock = ledger.clock
    # P1 = [Jan 31, Feb 28): 250, expiring at the end of P2 = Mar 31 (anchor day 31).
    clock.set(at(1, 31))
    first = await pay(billing, user, sub, at(1, 31), at(2, 28), at(1, 31))
    assert first.granted_micros == 250 * CREDIT
    await admin.debit(user, amount_micros=100 * CREDIT)  # P1 lot: 150 left
    # P2 = [Feb 28, Mar 31) on time: carried 150 <= 250, no cap; expires Apr 30.
    clock.set(at(2, 28))
    await pay(billing, user, sub, at(2, 28), at(3, 31), at(2, 28))
    balance = await admin.get_balance(user)
    assert balance.available_micros == 400 * CREDIT
    expiry = [lot.expires_at.ToDatetime(tzinfo=UTC) for g in balance.lots for lot in g.lots]
    assert expiry == [at(3, 31), at(4, 30)]
    # Cron on Mar 1: nothing is due (P1's carry-over was settled when P2 was granted).
    clock.set(at(3, 1, 0))
    summary = await admin.rollover("2027-03")
    assert (summary.accounts_processed, summary.credits_expired_micros) == (0, 0)
    assert (summary.periods_settled, summary.credits_carried_micros) == (0, 0)
    # The P3 renewal fails on Mar 31: past_due, no grant.
    clock.set(at(3, 31))
    failed = await billing.billing.RecordPaymentFailure(
        bpb.RecordPaymentFailureRequest(
            request_id="evt_fail_p3",
            subscription_id=sub,
            customer_id="cus_" + sub,
            invoice_id="in_p3",
            event_created_at=ts(at(3, 31)),
        )
    )
    assert failed.subscription.status == pb.SUBSCRIPTION_STATUS_PAST_DUE
    # Cron on Apr 1: P1's 150 expired at Mar 31; P2 ended unrenewed, its 250 is carried.
    clock.set(at(4, 1, 0))
    summary = await admin.rollover("2027-04")
    assert (summary.accounts_processed, summary.credits_expired_micros) == (1, 150 * CREDIT)
    assert (summary.periods_settled, summary.credits_carried_micros) == (1, 250 * CREDIT)
    # P3 = [Mar 31, Apr 30) paid late on Apr 5: 250, expiring May 31 (not May 30).
    clock.set(at(4, 5))
    late = await pay(billing, user, sub, at(3, 31), at(4, 30), at(4, 5))
    assert late.granted_micros == 250 * CREDIT
    assert late.subscription.status == pb.SUBSCRIPTION_STATUS_ACTIVE
    assert (await admin.get_balance(user)).available_micros == 500 * CREDIT
    # P4 = [Apr 30, May 31) on a 100-credit plan: P2's 250 expires at Apr 30; the carried
    # P3 250 is capped at 100 (150 expire); 100 granted. 500 - 250 - 150 + 100 = 200.
    clock.set(at(4, 30))
    await pay(billing, user, sub, at(4, 30), at(5, 31), at(4, 30), credits=100)
    assert (await admin.get_balance(user)).available_micros == 200 * CREDIT
    assert await expiries(admin, user) == [-150, -250, -150]
    # Cron on May 1, twice: everything was recorded by P4's grant; both runs do nothing.
    clock.set(at(5, 1, 0))
    for _ in range(2):
        summary = await admin.rollover("2027-05")
        assert (summary.accounts_processed, summary.credits_expired_micros) == (0, 0)
        assert (summary.periods_settled, summary.credits_carried_micros) == (0, 0)
    balance = await admin.get_balance(user)
    assert balance.available_micros == 200 * CREDIT
    expiry = [lot.expires_at.ToDatetime(tzinfo=UTC) for g in balance.lots for lot in g.lots]
    assert expiry == [at(5, 31), at(6, 30)]


async def _accounts_with_due_promos(
    ledger: Ledger, admin: AsyncCreditWalletClient, count: int
) -> list[str]:
    users = [new_user() for _ in range(count)]
    soon = ledger.clock.now() + dt.timedelta(days=1)
    for user in users:
        await admin.grant(
            user, 3 * CREDIT, pb.LOT_SOURCE_PROMO, expires_at=soon, create_account=True
        )
        await admin.grant(user, 2 * CREDIT, pb.LOT_SOURCE_TOP_UP)
    ledger.clock.advance(days=2)
    return users


async def _expire_rows(ledger: Ledger, users: list[str]) -> dict[str, int]:
    found = await ledger.pool.fetch(
        "SELECT user_id, count(*) AS n FROM credit_transactions "
        "WHERE type = 'expire' AND user_id = ANY($1::text[]) GROUP BY user_id",
        users,
    )
    return {r["user_id"]: r["n"] for r in found}


async def _flush(ledger: Ledger) -> None:
    """Record what earlier tests left due, so a test's summaries count only its own work."""
    await rollover.run(ledger.pool, "2027-01", ledger.clock)


async def test_crash_after_first_chunk_then_rerun_records_each_expiry_once(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    await _flush(ledger)
    users = await _accounts_with_due_promos(ledger, admin, 20)

    async def crash(done: rollover.Summary) -> None:
        raise RuntimeError("injected crash after the first chunk")

    with pytest.raises(RuntimeError):
        await rollover.run(
            ledger.pool, "2027-01", ledger.clock, chunk_accounts=7, after_chunk=crash
        )
    assert len(await _expire_rows(ledger, users)) == 7
    summary = await admin.rollover("2027-01")
    assert (summary.accounts_processed, summary.credits_expired_micros) == (13, 13 * 3 * CREDIT)
    assert set((await _expire_rows(ledger, users)).values()) == {1}
    assert len(await _expire_rows(ledger, users)) == 20
    for user in users:
        assert await expiries(admin, user) == [-3]
        assert (await admin.get_balance(user)).available_micros == 2 * CREDIT


async def test_sequential_and_concurrent_runs_give_one_result(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    await _flush(ledger)
    users = await _accounts_with_due_promos(ledger, admin, 24)
    runs = await asyncio.gather(
        *(rollover.run(ledger.pool, "2027-02", ledger.clock, chunk_accounts=5) for _ in range(4))
    )
    assert sum(r.accounts_processed for r in runs) == 24
    assert sum(r.credits_expired_micros for r in runs) == 24 * 3 * CREDIT
    assert set((await _expire_rows(ledger, users)).values()) == {1}
    before = [await admin.get_balance(u) for u in users]
    first = await admin.rollover("2026-12")
    second = await admin.rollover("2026-12")
    assert (first.accounts_processed, second.accounts_processed) == (0, 0)
    assert first.credits_expired_micros == 0
    assert [await admin.get_balance(u) for u in users] == before
    for user in users:
        assert await expiries(admin, user) == [-3]


async def test_rollover_releases_expired_holds_and_records_expiry(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    user = new_user()
    soon = ledger.clock.now() + dt.timedelta(hours=1)
    await admin.grant(user, 4 * CREDIT, pb.LOT_SOURCE_PROMO, expires_at=soon, create_account=True)
    await admin.grant(user, 6 * CREDIT, pb.LOT_SOURCE_TOP_UP)
    await admin.authorize(user, amount_micros=5 * CREDIT, ttl_seconds=600)
    ledger.clock.advance(hours=2)
    summary = await rollover.run(ledger.pool, "2026-11", ledger.clock, chunk_accounts=3)
    assert summary.holds_released == 1
    # The hold gave 4 back to the (expired) promo lot and 1 to the top-up: 4 expire.
    assert summary.credits_expired_micros == 4 * CREDIT
    balance = await admin.get_balance(user)
    assert (balance.available_micros, balance.held_micros) == (6 * CREDIT, 0)
    assert await expiries(admin, user) == [-4]


async def test_a_daily_rollover_through_a_month_records_each_day_what_became_due(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """The cron every day of August at 00:10: each run records exactly what became due
    since the previous one (the trial that expired Aug 1 12:00 is recorded on Aug 2), and
    a second run the same day does nothing."""
    clock, billing = ledger.clock, ledger.client("billing")
    clock.set(dt.datetime(2028, 7, 2, 12, tzinfo=UTC))
    trial_user = new_user()
    await admin.ensure_account(trial_user)  # 5 trial credits, expiring Aug 1 12:00
    promo_days = (3, 9, 10, 31)
    promo_users = {day: new_user() for day in promo_days}
    for day, user in promo_users.items():
        expires = dt.datetime(2028, 8, day, 6, tzinfo=UTC)
        await admin.grant(
            user, day * CREDIT, pb.LOT_SOURCE_PROMO, expires_at=expires, create_account=True
        )
    # A subscription period [Jul 15, Aug 15) that is not renewed: its carry-over is due on
    # Aug 15 00:00, when it ends; its lot lives on until Sep 15.
    clock.set(dt.datetime(2028, 7, 15, 1, tzinfo=UTC))
    subscriber = new_user()
    start, end = dt.datetime(2028, 7, 15, tzinfo=UTC), dt.datetime(2028, 8, 15, tzinfo=UTC)
    await pay(billing, subscriber, "sub_daily", start, end, start)
    await admin.debit(subscriber, amount_micros=40 * CREDIT)
    clock.set(dt.datetime(2028, 8, 1, tzinfo=UTC))
    await _flush(ledger)
    holder = new_user()
    await admin.grant(holder, 10 * CREDIT, pb.LOT_SOURCE_TOP_UP, create_account=True)
    # day -> (accounts_processed, credits_expired, holds_released, periods_settled, carried)
    expected = {
        2: (1, 5, 0, 0, 0),
        4: (1, 3, 0, 0, 0),
        10: (1, 9, 0, 0, 0),
        11: (1, 10, 0, 0, 0),
        15: (0, 0, 0, 1, 210),
        20: (1, 0, 1, 0, 0),
    }
    for day in range(1, 32):
        clock.set(dt.datetime(2028, 8, day, 0, 10, tzinfo=UTC))
        if day == 19:
            await admin.authorize(holder, amount_micros=4 * CREDIT, ttl_seconds=86_400)
        for again in (False, True):
            summary = await rollover.run(ledger.pool, "2028-08", clock, chunk_accounts=2)
            did = (
                summary.accounts_processed,
                summary.credits_expired_micros // CREDIT,
                summary.holds_released,
                summary.periods_settled,
                summary.credits_carried_micros // CREDIT,
            )
            assert did == ((0, 0, 0, 0, 0) if again else expected.get(day, (0, 0, 0, 0, 0))), day
    assert await expiries(admin, trial_user) == [-5]
    for day, user in promo_users.items():
        assert await expiries(admin, user) == ([-day] if day < 31 else [])
    balance = await admin.get_balance(subscriber)
    assert balance.available_micros == 210 * CREDIT
    assert (await admin.get_balance(holder)).available_micros == 10 * CREDIT


async def test_rollover_racing_renewals_caps_once_and_never_deadlocks(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """Periods that ended unrenewed, then renewals on a 100-credit plan arriving while a
    rollover settles the same accounts (and another connection holds one account's lock):
    whoever comes first, each account ends with 100 carried + 100 granted."""
    clock, billing = ledger.clock, ledger.client("billing")
    start, end = dt.datetime(2028, 10, 1, tzinfo=UTC), dt.datetime(2028, 11, 1, tzinfo=UTC)
    clock.set(start + dt.timedelta(hours=1))
    users = [new_user() for _ in range(12)]
    for user in users:
        await pay(billing, user, "sub_race_" + user, start, end, start)
    clock.set(end + dt.timedelta(hours=1))
    await _flush_except(ledger, users)
    blocker = await ledger.pool.acquire()
    try:
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute("SELECT 1 FROM credits WHERE user_id = $1 FOR UPDATE", users[0])
        next_end = dt.datetime(2028, 12, 1, tzinfo=UTC)
        work = [
            *(pay(billing, u, "sub_race_" + u, end, next_end, end, credits=100) for u in users),
            rollover.run(ledger.pool, "2028-11", clock, chunk_accounts=3),
            rollover.run(ledger.pool, "2028-11", clock, chunk_accounts=5),
        ]
        running = asyncio.gather(*work)
        await asyncio.sleep(0.3)
        await transaction.rollback()
        results = await running
    finally:
        await ledger.pool.release(blocker)
    summaries = [r for r in results if isinstance(r, rollover.Summary)]
    assert sum(s.periods_settled for s in summaries) <= len(users)
    for user in users:
        assert (await admin.get_balance(user)).available_micros == 200 * CREDIT
    settled = await ledger.pool.fetchval(
        "SELECT count(*) FROM subscription_periods WHERE user_id = ANY($1::text[]) "
        "AND period_start = $2 AND carry_settled_at IS NOT NULL",
        users,
        start,
    )
    assert settled == len(users)


async def _flush_except(ledger: Ledger, users: list[str]) -> None:
    """Settle what other tests left due, leaving ``users``' ended periods for the race."""
    await ledger.pool.execute(
        "UPDATE subscription_periods SET carry_settled_at = $2 WHERE carry_settled_at IS NULL "
        "AND lot_id IS NOT NULL AND NOT user_id = ANY($1::text[])",
        users,
        ledger.clock.now(),
    )
