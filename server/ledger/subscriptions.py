"""Subscriptions: the provider's state, applied in event order, and one grant per paid period.

Stripe does not order its events, so two things are kept apart:

- **State** (status, price, period, schedule, cancel flag) is applied only when the event is
  not older than the last applied one (``last_event_at``; equal times apply).
- **Payments** are facts, whatever their order: a paid period is recorded once per
  (subscription, period_start) (the primary key of ``subscription_periods``) and granted once
  (the lot's ``grant_key``). If no user is known yet, the period waits, and is granted when
  the link arrives (a checkout naming the user, or any event naming a linked customer).

A period's lot expires at the end of the period after its own (``expiry_of``): the recorded
paid period that starts where this one ends, when there is one (the provider's own end for
it); otherwise the next boundary of the period's billing schedule. Each new paid period may
change that for its neighbours (it is the successor of one, or cuts one short when it starts
inside it, as an anchor reset does); a lot whose expiry so changes gets an ``expiry_change``
history row, never a silent update.

Lock order: the customer (advisory), the subscription row, the owner's account, then the
subscription's period rows (the rollover takes the account before period rows too).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Sequence
from typing import Final

import asyncpg
from creditwallet.server.clock import Clock
from creditwallet.server.db import Connection
from creditwallet.server.ledger import (
    accounts,
    customers,
    history,
    lots,
    periods,
    referrals,
    refunds,
)
from creditwallet.server.ledger.types import Account, Subscription

log = logging.getLogger(__name__)

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
    cancel_at_period_end = $7, last_event_at = $8, updated_at = $9,
    billing_cycle_anchor = coalesce($10, billing_cycle_anchor),
    billing_interval = coalesce($11, billing_interval),
    billing_interval_count = coalesce($12, billing_interval_count)
WHERE subscription_id = $1
"""

_SCHEDULE = """
SELECT billing_cycle_anchor, billing_interval, billing_interval_count FROM subscriptions
WHERE subscription_id = $1
"""

_SET_OWNER = """
UPDATE subscriptions SET user_id = $2,
    customer_id = CASE WHEN customer_id = '' THEN $3 ELSE customer_id END, updated_at = $4
WHERE subscription_id = $1 AND user_id IS NULL
"""

_EXISTS = "SELECT 1 FROM subscription_periods WHERE subscription_id = $1 AND period_start = $2"

# A paid "period" inside one already recorded is a partial charge, not a new period.
_COVERING = """
SELECT period_start, period_end FROM subscription_periods
WHERE subscription_id = $1 AND period_start < $2 AND period_end >= $3 LIMIT 1
"""

_RECORD_PERIOD = """
INSERT INTO subscription_periods (subscription_id, period_start, period_end, credits_micros,
    payment_id, amount_paid_minor, currency, recorded_at, billing_cycle_anchor,
    billing_interval, billing_interval_count, schedule_source)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
ON CONFLICT (subscription_id, period_start) DO NOTHING
"""

# A period is cut short where the next recorded period starts, if that is inside it.
_CUT = """
UPDATE subscription_periods p SET ended_at = n.next_start
FROM (SELECT period_start,
             lead(period_start) OVER (ORDER BY period_start) AS next_start
      FROM subscription_periods WHERE subscription_id = $1) n
WHERE p.subscription_id = $1 AND p.period_start = n.period_start
  AND n.next_start < p.period_end AND p.ended_at IS DISTINCT FROM n.next_start
"""

_HAS_PENDING = "SELECT 1 FROM subscription_periods WHERE subscription_id = $1 AND lot_id IS NULL"

_TIMELINE = """
SELECT period_start, period_end, ended_at, user_id, lot_id, expires_at, expiry_frozen_at,
       credits_micros, payment_id, billing_cycle_anchor, billing_interval, billing_interval_count
FROM subscription_periods WHERE subscription_id = $1 ORDER BY period_start
"""

_PENDING = """
SELECT period_start FROM subscription_periods
WHERE subscription_id = $1 AND lot_id IS NULL ORDER BY period_start FOR UPDATE
"""

_MARK_GRANTED = """
UPDATE subscription_periods SET user_id = $3, lot_id = $4, transaction_id = $5, granted_at = $6,
    expires_at = $7
WHERE subscription_id = $1 AND period_start = $2
"""

_SET_SCHEDULE = """
UPDATE subscription_periods SET billing_cycle_anchor = $3, billing_interval = $4,
    billing_interval_count = $5, schedule_source = 'inferred'
WHERE subscription_id = $1 AND period_start = $2
"""

_MOVE_LOT_EXPIRY = "UPDATE credit_lots SET expires_at = $3 WHERE user_id = $1 AND lot_id = $2"

_MOVE_PERIOD_EXPIRY = """
UPDATE subscription_periods SET expires_at = $3
WHERE subscription_id = $1 AND period_start = $2
"""

# The account after an expiry_change row: it names its newest history row, and an earlier
# expiry lowers next_expiry_at (a lower bound of the account's expiries).
_AFTER_CHANGE = f"""
UPDATE credits SET next_expiry_at = CASE WHEN $2::timestamptz IS NULL THEN next_expiry_at
                                         ELSE LEAST(next_expiry_at, $2) END,
    updated_at = $3, last_transaction_id = $4
WHERE user_id = $1
RETURNING {Account.COLUMNS}
"""

# When a later end was learnt after the lot's expiry had passed (never revived), or an
# earlier end only once it had passed (the expiry then stops at the moment it was learnt).
_FREEZE = """
UPDATE subscription_periods SET expiry_frozen_at = $3
WHERE subscription_id = $1 AND period_start = $2 AND (expiry_frozen_at IS NULL OR $4)
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
  AND coalesce(p.ended_at, p.period_end) <= $3
ORDER BY l.expires_at ASC NULLS LAST, l.granted_at, l.lot_id
"""

# Settles the periods ended by $2 and records the cap ($4) on every one of them it applied to
# (a cap lower than an earlier one binds from now on: see ledger/carry.py).
_SETTLE_CARRY = """
UPDATE subscription_periods SET carry_settled_at = coalesce(carry_settled_at, $3),
    carry_cap_micros = LEAST(carry_cap_micros, $4::bigint)
WHERE user_id = $1 AND lot_id IS NOT NULL AND coalesce(ended_at, period_end) <= $2
  AND (carry_settled_at IS NULL OR carry_cap_micros IS NULL OR carry_cap_micros > $4::bigint)
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
    schedule: periods.Schedule | None = None


@dataclasses.dataclass(frozen=True)
class SyncResult:
    subscription: Subscription
    granted_micros: int
    pending_user: bool


@dataclasses.dataclass(frozen=True)
class Period:
    """One recorded paid period, as ``expiry_of`` needs it."""

    start: dt.datetime
    end: dt.datetime
    ended_at: dt.datetime | None
    user_id: str | None
    lot_id: int | None
    expires_at: dt.datetime | None
    expiry_frozen_at: dt.datetime | None
    credits_micros: int
    payment_id: str
    schedule: periods.Schedule | None

    @property
    def effective_end(self) -> dt.datetime:
        return self.ended_at or self.end

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Period:
        return cls(
            start=row["period_start"],
            end=row["period_end"],
            ended_at=row["ended_at"],
            user_id=row["user_id"],
            lot_id=row["lot_id"],
            expires_at=row["expires_at"],
            expiry_frozen_at=row["expiry_frozen_at"],
            credits_micros=row["credits_micros"],
            payment_id=row["payment_id"],
            schedule=schedule_of(row),
        )


def schedule_of(row: asyncpg.Record) -> periods.Schedule | None:
    if row["billing_cycle_anchor"] is None:
        return None
    return periods.Schedule(
        row["billing_cycle_anchor"], row["billing_interval"], row["billing_interval_count"]
    )


def expiry_of(period: Period, timeline: Sequence[Period]) -> dt.datetime | None:
    """The end of the period after ``period``: its recorded successor's, else the schedule's.

    The successor is the recorded paid period starting where this one (effectively) ends;
    a period cut short always has one (the period that cut it). None: no schedule is known
    (a period recorded before schedules were) and no successor either.
    """
    successor = next((p for p in timeline if p.start == period.effective_end), None)
    if successor is not None:
        return successor.effective_end
    if period.schedule is None:
        return None
    return period.schedule.following(period.end)


def choose_schedule(
    start: dt.datetime,
    end: dt.datetime,
    reported: periods.Schedule | None,
    recorded: periods.Schedule | None,
) -> tuple[periods.Schedule, str]:
    """The schedule a new paid period follows, and where it came from.

    The reported one if the period ends on one of its boundaries, else the one last recorded
    for the subscription if it fits, else the schedule the period implies (with the reported
    or recorded interval, or one guessed from the period's length).
    """
    if reported is not None and reported.index_of(end) is not None:
        return reported, "reported"
    if recorded is not None and recorded.index_of(end) is not None:
        return recorded, "recorded"
    known = reported or recorded
    interval, count = (known.interval, known.count) if known else (_guess_interval(start, end), 1)
    return periods.infer(start, end, interval, count), "inferred"


def _guess_interval(start: dt.datetime, end: dt.datetime) -> str:
    length = end - start
    if length == dt.timedelta(days=1):
        return "day"
    if length == dt.timedelta(days=7):
        return "week"
    return "year" if length >= dt.timedelta(days=365) else "month"


async def sync(conn: Connection, cmd: SyncCommand, clock: Clock) -> SyncResult:
    """Apply the state if not stale, record a paid period, grant what a known user is owed."""
    now = clock.now()
    await customers.lock(conn, cmd.customer_id)
    row = await _lock(conn, cmd.subscription_id, cmd.customer_id, now)
    owner = row["user_id"] or cmd.user_id or await customers.owner_of(conn, cmd.customer_id)
    if cmd.user_id and cmd.customer_id:
        await customers.link(conn, cmd.customer_id, cmd.user_id, now)
    if row["last_event_at"] is None or cmd.event_created_at >= row["last_event_at"]:
        schedule = cmd.schedule
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
            schedule.anchor if schedule else None,
            schedule.interval if schedule else None,
            schedule.count if schedule else None,
        )
    paid = cmd.paid_period if cmd.status in PAID_STATUSES else None
    granted = 0
    if owner:
        granted = await _adopt(conn, cmd, owner, paid, clock)
    elif paid is not None:
        await _record_period(conn, cmd, paid, now)
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
    await customers.lock(conn, customer_id)
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
        await _adopt_existing(conn, subscription_id, owner, customer_id, clock)
    return await read(conn, subscription_id)


async def adopt_customer(conn: Connection, customer_id: str, clock: Clock) -> None:
    """A customer just got its user: link its waiting subscriptions and grant their periods."""
    owner = await customers.owner_of(conn, customer_id)
    if owner is None:
        return
    for row in await conn.fetch(_UNLINKED_OF_CUSTOMER, customer_id):
        await _adopt_existing(conn, row["subscription_id"], owner, customer_id, clock)


async def read(conn: Connection, subscription_id: str) -> Subscription:
    row = await conn.fetchrow(_READ, subscription_id)
    assert row is not None
    return Subscription.from_row(row)


async def for_user(conn: Connection, user_id: str) -> Subscription | None:
    """The user's most recently updated subscription, for GetBalance."""
    row = await conn.fetchrow(_FOR_USER, user_id)
    return Subscription.from_row(row) if row is not None else None


async def timeline(conn: Connection, subscription_id: str) -> list[Period]:
    return [Period.from_row(r) for r in await conn.fetch(_TIMELINE, subscription_id)]


async def _lock(
    conn: Connection, subscription_id: str, customer_id: str, now: dt.datetime
) -> asyncpg.Record:
    await conn.execute(_ENSURE, subscription_id, customer_id, now)
    row = await conn.fetchrow(_LOCK, subscription_id)
    assert row is not None
    return row


async def _record_period(
    conn: Connection, cmd: SyncCommand, paid: PaidPeriod, now: dt.datetime
) -> bool:
    """Record a paid period once; True when it is new. Cuts short the period it starts in."""
    sub_id = cmd.subscription_id
    if await conn.fetchval(_EXISTS, sub_id, paid.start) is not None:
        return False
    covering = await conn.fetchrow(_COVERING, sub_id, paid.start, paid.end)
    if covering is not None:
        log.warning(
            "paid period inside a recorded one is not a new period; nothing granted",
            extra={"subscription": sub_id, "start": paid.start.isoformat()},
        )
        return False
    state = await conn.fetchrow(_SCHEDULE, sub_id)
    assert state is not None
    recorded = schedule_of(state)
    schedule, source = choose_schedule(paid.start, paid.end, cmd.schedule, recorded)
    await conn.execute(
        _RECORD_PERIOD,
        sub_id,
        paid.start,
        paid.end,
        cmd.period_credits_micros,
        paid.payment_id,
        paid.amount_paid_minor,
        paid.currency,
        now,
        schedule.anchor,
        schedule.interval,
        schedule.count,
        source,
    )
    await conn.execute(_CUT, sub_id)
    return True


async def _adopt(
    conn: Connection, cmd: SyncCommand, owner: str, paid: PaidPeriod | None, clock: Clock
) -> int:
    """Link the owner, record the paid period, correct neighbours' expiries, grant."""
    sub_id = cmd.subscription_id
    await conn.execute(_SET_OWNER, sub_id, owner, cmd.customer_id, clock.now())
    user_id = (await read(conn, sub_id)).user_id
    assert user_id is not None
    if paid is None and await conn.fetchval(_HAS_PENDING, sub_id) is None:
        return 0
    locked = await accounts.create_without_trial(conn, user_id, clock)
    if paid is not None:
        await _record_period(conn, cmd, paid, locked.now)
    return await _bring_up_to_date(conn, locked, sub_id, clock)


async def _adopt_existing(
    conn: Connection, subscription_id: str, owner: str, customer_id: str, clock: Clock
) -> int:
    await conn.execute(_SET_OWNER, subscription_id, owner, customer_id, clock.now())
    user_id = (await read(conn, subscription_id)).user_id
    assert user_id is not None
    if await conn.fetchval(_HAS_PENDING, subscription_id) is None:
        return 0
    locked = await accounts.create_without_trial(conn, user_id, clock)
    return await _bring_up_to_date(conn, locked, subscription_id, clock)


async def _bring_up_to_date(
    conn: Connection, locked: accounts.Locked, subscription_id: str, clock: Clock
) -> int:
    """Correct the granted lots' expiries, then grant the waiting periods (account locked)."""
    account = await correct_expiries(conn, locked.account, subscription_id, locked.now)
    account, granted = await _grant_pending(conn, account, locked.now, subscription_id, clock)
    if granted:
        now = accounts.ledger_time(clock, account)
        account = await correct_expiries(conn, account, subscription_id, now)
    # A shortened expiry may already have passed: record it now (the account's touch).
    await accounts.touch(conn, account, accounts.ledger_time(clock, account))
    return granted


async def _grant_pending(
    conn: Connection, account: Account, now: dt.datetime, subscription_id: str, clock: Clock
) -> tuple[Account, int]:
    """Grant every recorded, not yet granted paid period of the subscription, oldest first."""
    pending = {r["period_start"] for r in await conn.fetch(_PENDING, subscription_id)}
    if not pending:
        return account, 0
    user_id = account.user_id
    line = await timeline(conn, subscription_id)
    total = 0
    for period in line:
        if period.start not in pending:
            continue
        if period.schedule is None:  # recorded before schedules were: the period's own
            period = await _infer_schedule(conn, subscription_id, period)
        expires = expiry_of(period, line)
        assert expires is not None
        credits = period.credits_micros
        account = await cap_carried(conn, account, credits, period.start, now)
        granted = await lots.grant(
            conn,
            account,
            source="subscription",
            amount_micros=credits,
            now=now,
            expires_at=expires,
            metadata={
                "subscription_id": subscription_id,
                "period_start": period.start.isoformat(),
                "expires_at": expires.isoformat(),
            },
            grant_key=f"subscription:{subscription_id}:{period.start.isoformat()}",
        )
        await conn.execute(
            _MARK_GRANTED,
            subscription_id,
            period.start,
            user_id,
            granted.lot_id,
            granted.transaction_id,
            now,
            expires,
        )
        await refunds.apply(conn, period.payment_id, clock)
        await referrals.on_first_payment(conn, user_id, clock)
        locked = await accounts.lock(conn, user_id, clock)
        account, now = locked.account, locked.now
        total += credits
    return account, total


async def _infer_schedule(conn: Connection, subscription_id: str, period: Period) -> Period:
    schedule, _ = choose_schedule(period.start, period.end, None, None)
    await conn.execute(
        _SET_SCHEDULE,
        subscription_id,
        period.start,
        schedule.anchor,
        schedule.interval,
        schedule.count,
    )
    return dataclasses.replace(period, schedule=schedule)


async def correct_expiries(
    conn: Connection, account: Account, subscription_id: str, now: dt.datetime
) -> Account:
    """Move each granted lot's expiry to the end of the period after its own, as now known.

    Each move is an ``expiry_change`` history row (amount 0). Nothing moves into the past
    of what was already decided: a lot is never revived (a later end learnt only after the
    lot's expiry passed leaves it expired), and an earlier end learnt only once it has passed
    ends the lot now, not back then, since its credits were live until the ledger knew. Both
    record when that was decided on the period (``expiry_frozen_at``).
    """
    line = await timeline(conn, subscription_id)
    for period in line:
        if period.lot_id is None or period.user_id != account.user_id:
            continue
        old, new = period.expires_at, expiry_of(period, line)
        if old is None or new is None or new == old:
            continue
        if new > old and old <= now:
            await conn.execute(_FREEZE, subscription_id, period.start, now, False)
            continue
        if new < old and new < now:
            if old <= now:  # already expired: it stays where it was
                await conn.execute(_FREEZE, subscription_id, period.start, now, False)
                continue
            new = now
            await conn.execute(_FREEZE, subscription_id, period.start, now, True)
        await conn.execute(_MOVE_LOT_EXPIRY, account.user_id, period.lot_id, new)
        await conn.execute(_MOVE_PERIOD_EXPIRY, subscription_id, period.start, new)
        successor = next((p for p in line if p.start == period.effective_end), None)
        tx_id = await history.append(
            conn,
            account.user_id,
            "expiry_change",
            0,
            account.balance_micros,
            now,
            source="subscription",
            metadata={
                "lot_id": str(period.lot_id),
                "subscription_id": subscription_id,
                "period_start": period.start.isoformat(),
                "previous_expires_at": old.isoformat(),
                "expires_at": new.isoformat(),
                "reason": "next_period_end" if successor else "schedule",
            },
        )
        row = await conn.fetchrow(
            _AFTER_CHANGE, account.user_id, new if new < old else None, now, tx_id
        )
        assert row is not None
        account = Account.from_row(row)
        log.info(
            "subscription lot expiry moved",
            extra={"subscription": subscription_id, "lot_id": period.lot_id},
        )
    return account


async def cap_carried(
    conn: Connection,
    account: Account,
    allotment_micros: int,
    ended_by: dt.datetime,
    now: dt.datetime,
) -> Account:
    """Cap the subscription credits carried from periods ended by ``ended_by`` at one allotment.

    The excess over one allotment expires now, soonest-expiring lots first (they would
    have gone first anyway). Those periods' carry-over is then settled: the rollover has
    nothing left to do for them. The cap is recorded on each of them: credits a pending hold
    reserved from their lots are not counted here (a capture spends them), but when they
    come back they count against it (``carry.enforce``).
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
    await conn.execute(_SETTLE_CARRY, account.user_id, ended_by, now, allotment_micros)
    return account
