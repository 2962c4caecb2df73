"""Subscriptions: the provider's state, applied in event order, and one grant per paid period.

Stripe does not order its events, so two things are kept apart:

- **State** (status, price, period, cancel flag) is applied only when the event is not older
  than the last applied one (``last_event_at``; equal times apply). A stale update never wins.
- **Payments** are facts, whatever their order: a paid period is recorded once per
  (subscription, period_start) (the primary key of ``subscription_periods``) and granted once
  (the lot's ``grant_key``). If no user is known yet, the period waits, and is granted when
  the link arrives (a checkout naming the user, or any event naming a linked customer).

Lock order: the subscription row, then the account, as everywhere in this module.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Final

import asyncpg
from creditwallet.server.clock import Clock
from creditwallet.server.db import Connection
from creditwallet.server.ledger import accounts, customers, lots, periods, referrals, refunds
from creditwallet.server.ledger.types import Account, Subscription

PAID_STATUSES: Final = ("active", "trialing")

_ENSURE = """
INSERT INTO subscriptions (subscription_id, customer_id, created_at, updated_at)
VALUES ($1, $2, $3, $3) ON CONFLICT (subscription_id) DO NOTHING
"""

_COLUMNS = Subscription.COLUMNS

_LOCK = f"SELECT {_COLUMNS} FROM subscriptions WHERE subscription_id = $1 FOR UPDATE"
_READ = f"SELECT {_COLUMNS} FROM subscriptions WHERE subscription_id = $1"
_FOR_USER = f"""
SELECT {_COLUMNS} FROM subscriptions WHERE user_id = $1
ORDER BY last_event_at DESC NULLS LAST, subscription_id LIMIT 1
"""

_APPLY = """
UPDATE subscriptions SET status = $2, price_id = CASE WHEN $3 = '' THEN price_id ELSE $3 END,
    period_credits_micros = CASE WHEN $4::bigint > 0 THEN $4 ELSE period_credits_micros END,
    current_period_start = coalesce($5, current_period_start),
    current_period_end = coalesce($6, current_period_end),
    cancel_at_period_end = $7, last_event_at = $8, updated_at = $9
WHERE subscription_id = $1
"""

_SET_OWNER = """
UPDATE subscriptions SET user_id = $2,
    customer_id = CASE WHEN customer_id = '' THEN $3 ELSE customer_id END, updated_at = $4
WHERE subscription_id = $1 AND user_id IS NULL
"""

_RECORD_PERIOD = """
INSERT INTO subscription_periods (subscription_id, period_start, period_end, credits_micros,
    payment_id, amount_paid_minor, currency, recorded_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (subscription_id, period_start) DO NOTHING
"""

_PENDING = """
SELECT period_start, period_end, credits_micros, payment_id FROM subscription_periods
WHERE subscription_id = $1 AND lot_id IS NULL ORDER BY period_start FOR UPDATE
"""

_MARK_GRANTED = """
UPDATE subscription_periods SET user_id = $3, lot_id = $4, transaction_id = $5, granted_at = $6
WHERE subscription_id = $1 AND period_start = $2
"""

_UNLINKED_OF_CUSTOMER = """
SELECT subscription_id FROM subscriptions WHERE customer_id = $1 AND user_id IS NULL
ORDER BY subscription_id FOR UPDATE
"""

# Subscription credits carried from periods that ended by $3, soonest-expiring first.
_CARRIED = """
SELECT l.lot_id, l.remaining_micros FROM credit_lots l
JOIN subscription_periods p ON p.user_id = l.user_id AND p.lot_id = l.lot_id
WHERE l.user_id = $1 AND l.remaining_micros > 0 AND (l.expires_at IS NULL OR l.expires_at > $2)
  AND p.period_end <= $3
ORDER BY l.expires_at ASC NULLS LAST, l.granted_at, l.lot_id
"""


@dataclasses.dataclass(frozen=True)
class PaidPeriod:
    start: dt.datetime
    end: dt.datetime
    payment_id: str
    amount_paid_minor: int
    currency: str


@dataclasses.dataclass(frozen=True)
class SyncCommand:
    subscription_id: str
    customer_id: str
    user_id: str
    status: str
    price_id: str
    period_credits_micros: int
    period_start: dt.datetime | None
    period_end: dt.datetime | None
    cancel_at_period_end: bool
    event_created_at: dt.datetime
    paid_period: PaidPeriod | None


@dataclasses.dataclass(frozen=True)
class SyncResult:
    subscription: Subscription
    granted_micros: int
    pending_user: bool


async def sync(conn: Connection, cmd: SyncCommand, clock: Clock) -> SyncResult:
    """Apply the state if not stale, record a paid period, grant what a known user is owed."""
    now = clock.now()
    await customers.lock(conn, cmd.customer_id)
    row = await _lock(conn, cmd.subscription_id, cmd.customer_id, now)
    owner = row["user_id"] or cmd.user_id or await customers.owner_of(conn, cmd.customer_id)
    if cmd.user_id and cmd.customer_id:
        await customers.link(conn, cmd.customer_id, cmd.user_id, now)
    if row["last_event_at"] is None or cmd.event_created_at >= row["last_event_at"]:
        await conn.execute(
            _APPLY,
            cmd.subscription_id,
            cmd.status,
            cmd.price_id,
            cmd.period_credits_micros,
            cmd.period_start,
            cmd.period_end,
            cmd.cancel_at_period_end,
            cmd.event_created_at,
            now,
        )
    paid = cmd.paid_period
    if paid is not None and cmd.status in PAID_STATUSES:
        await conn.execute(
            _RECORD_PERIOD,
            cmd.subscription_id,
            paid.start,
            paid.end,
            cmd.period_credits_micros,
            paid.payment_id,
            paid.amount_paid_minor,
            paid.currency,
            now,
        )
    granted = 0
    if owner:
        granted = await _adopt(conn, cmd.subscription_id, owner, cmd.customer_id, clock)
    return SyncResult(await read(conn, cmd.subscription_id), granted, pending_user=not owner)


async def payment_failed(
    conn: Connection,
    subscription_id: str,
    customer_id: str,
    event_created_at: dt.datetime,
    clock: Clock,
) -> Subscription:
    """A failed renewal: past_due, unless a newer event already said otherwise."""
    now = clock.now()
    row = await _lock(conn, subscription_id, customer_id, now)
    if row["last_event_at"] is None or event_created_at >= row["last_event_at"]:
        await conn.execute(
            "UPDATE subscriptions SET status = 'past_due', last_event_at = $2, updated_at = $3 "
            "WHERE subscription_id = $1",
            subscription_id,
            event_created_at,
            now,
        )
    owner = row["user_id"] or await customers.owner_of(conn, customer_id)
    if owner:
        await _adopt(conn, subscription_id, owner, customer_id, clock)
    return await read(conn, subscription_id)


async def adopt_customer(conn: Connection, customer_id: str, clock: Clock) -> None:
    """A customer just got its user: link its waiting subscriptions and grant their periods."""
    owner = await customers.owner_of(conn, customer_id)
    if owner is None:
        return
    for row in await conn.fetch(_UNLINKED_OF_CUSTOMER, customer_id):
        await _adopt(conn, row["subscription_id"], owner, customer_id, clock)


async def read(conn: Connection, subscription_id: str) -> Subscription:
    row = await conn.fetchrow(_READ, subscription_id)
    assert row is not None
    return Subscription.from_row(row)


async def for_user(conn: Connection, user_id: str) -> Subscription | None:
    """The user's most recently updated subscription, for GetBalance."""
    row = await conn.fetchrow(_FOR_USER, user_id)
    return Subscription.from_row(row) if row is not None else None


async def _lock(
    conn: Connection, subscription_id: str, customer_id: str, now: dt.datetime
) -> asyncpg.Record:
    await conn.execute(_ENSURE, subscription_id, customer_id, now)
    row = await conn.fetchrow(_LOCK, subscription_id)
    assert row is not None
    return row


async def _adopt(
    conn: Connection, subscription_id: str, user_id: str, customer_id: str, clock: Clock
) -> int:
    await conn.execute(_SET_OWNER, subscription_id, user_id, customer_id, clock.now())
    owner = (await read(conn, subscription_id)).user_id
    assert owner is not None
    return await _grant_pending(conn, subscription_id, owner, clock)


async def _grant_pending(conn: Connection, subscription_id: str, user_id: str, clock: Clock) -> int:
    """Grant every recorded, not yet granted paid period of the subscription, oldest first."""
    pending = await conn.fetch(_PENDING, subscription_id)
    if not pending:
        return 0
    locked = await accounts.create_without_trial(conn, user_id, clock)
    account, now = locked.account, locked.now
    total = 0
    for period in pending:
        start, end, credits = period["period_start"], period["period_end"], period["credits_micros"]
        account = await cap_carried(conn, account, credits, start, now)
        granted = await lots.grant(
            conn,
            account,
            source="subscription",
            amount_micros=credits,
            now=now,
            expires_at=periods.next_period_end(start, end),
            metadata={"subscription_id": subscription_id, "period_start": start.isoformat()},
            grant_key=f"subscription:{subscription_id}:{start.isoformat()}",
        )
        await conn.execute(
            _MARK_GRANTED,
            subscription_id,
            start,
            user_id,
            granted.lot_id,
            granted.transaction_id,
            now,
        )
        await refunds.apply(conn, period["payment_id"], clock)
        await referrals.on_first_payment(conn, user_id, clock)
        locked = await accounts.lock(conn, user_id, clock)
        account, now = locked.account, locked.now
        total += credits
    return total


async def cap_carried(
    conn: Connection,
    account: Account,
    allotment_micros: int,
    ended_by: dt.datetime,
    now: dt.datetime,
) -> Account:
    """Cap the subscription credits carried from periods ended by ``ended_by`` (the
    carry-over cap).

    The excess over one allotment expires now, soonest-expiring lots first (they would
    have gone first anyway).
    """
    carried = await conn.fetch(_CARRIED, account.user_id, now, ended_by)
    excess = sum(r["remaining_micros"] for r in carried) - allotment_micros
    for lot in carried:
        if excess <= 0:
            break
        take = min(excess, lot["remaining_micros"])
        account = await lots.expire_portion(
            conn, account, lot["lot_id"], "subscription", take, now, "carry_over_cap"
        )
        excess -= take
    return account
