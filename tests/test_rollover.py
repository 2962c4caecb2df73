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
    # Cron on Mar 1: nothing due; P1's 150 is carried.
    clock.set(at(3, 1, 0))
    summary = await admin.rollover("2027-03")
    assert (summary.accounts_processed, summary.credits_expired_micros) == (1, 0)
    assert summary.credits_carried_micros == 150 * CREDIT
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
    # Cron on Apr 1: P1's 150 expired at Mar 31; P2's 250 is carried.
    clock.set(at(4, 1, 0))
    summary = await admin.rollover("2027-04")
    assert summary.credits_expired_micros == 150 * CREDIT
    assert summary.credits_carried_micros == 250 * CREDIT
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
    # Cron on May 1, twice: carried P3's 100; the second run processes nobody.
    clock.set(at(5, 1, 0))
    summary = await admin.rollover("2027-05")
    assert (summary.accounts_processed, summary.credits_carried_micros) == (1, 100 * CREDIT)
    again = await admin.rollover("2027-05")
    assert (again.accounts_processed, again.credits_expired_micros) == (0, 0)
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


async def _markers(ledger: Ledger, period: str) -> dict[str, int]:
    rows = await ledger.pool.fetch(
        "SELECT user_id, count(*) AS n FROM rollover_accounts WHERE period = $1 GROUP BY user_id",
        period,
    )
    return {r["user_id"]: r["n"] for r in rows}


async def test_crash_after_first_chunk_then_rerun_processes_each_account_once(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    users = await _accounts_with_due_promos(ledger, admin, 20)
    total = len(await ledger.pool.fetch("SELECT user_id FROM credits"))

    async def crash(done: rollover.Summary) -> None:
        raise RuntimeError("injected crash after the first chunk")

    with pytest.raises(RuntimeError):
        await rollover.run(
            ledger.pool, "2027-01", ledger.clock, chunk_accounts=7, after_chunk=crash
        )
    assert len(await _markers(ledger, "2027-01")) == 7
    summary = await admin.rollover("2027-01")
    assert summary.accounts_processed == total - 7
    markers = await _markers(ledger, "2027-01")
    assert len(markers) == total
    assert set(markers.values()) == {1}
    for user in users:
        assert await expiries(admin, user) == [-3]
        assert (await admin.get_balance(user)).available_micros == 2 * CREDIT


async def test_sequential_and_concurrent_runs_give_one_result(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    users = await _accounts_with_due_promos(ledger, admin, 24)
    total = len(await ledger.pool.fetch("SELECT user_id FROM credits"))
    runs = await asyncio.gather(
        *(rollover.run(ledger.pool, "2027-02", ledger.clock, chunk_accounts=5) for _ in range(4))
    )
    assert sum(r.accounts_processed for r in runs) == total
    assert sum(r.credits_expired_micros for r in runs) == 24 * 3 * CREDIT
    markers = await _markers(ledger, "2027-02")
    assert (len(markers), set(markers.values())) == (total, {1})
    before = [await admin.get_balance(u) for u in users]
    first = await admin.rollover("2026-12")
    second = await admin.rollover("2026-12")
    assert (first.accounts_processed, second.accounts_processed) == (total, 0)
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
