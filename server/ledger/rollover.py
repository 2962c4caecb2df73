"""The rollover: every account's bookkeeping brought up to date, by what is due.

What "up to date as of now" means: expired holds released, lots past their ``expires_at``
recorded as ``expire`` transactions, and the subscription credits carried past the end of a
period capped at one allotment. It never grants: grants follow payments only. It also
deletes idempotency records past their retention (``limits.IDEMPOTENCY_RETENTION_DAYS``).

Any run, on any day, does whatever has become due since the previous one, and each piece of
work is done once because its own state says when it is done, not a per-month marker:

- **Expiries and holds.** Accounts whose ``next_expiry_at`` (a lower bound of their next lot
  or hold expiry) has passed, found by the ``credits_next_expiry`` index: a daily run reads
  only the accounts with something due, not every account. Once swept, an account's
  ``next_expiry_at`` is past now, so a second run (or a concurrent one, which waits for the
  account lock and re-checks) finds nothing to do for it. A lot's expiry is recorded once
  because expiring it sets its remaining credits to 0.
- **Carry-over.** Granted subscription periods that ended and whose carry-over is not settled
  (``carry_settled_at``), found by the ``subscription_periods_carry_due`` index. Each such
  period is claimed (settled) once, under its account's lock, by the run or the renewal
  grant that gets to it first; its account's carried credits are capped then.

Both lists are walked by keyset in chunks of ``limits.ROLLOVER_CHUNK_ACCOUNTS``, each chunk
one transaction, so a million due accounts never mean one huge transaction and a crash
loses at most the chunk in flight (the next run does it). The common work is set-based: one
statement expires a chunk's due lots and writes their history rows; accounts with an expired
hold (rare) and the accounts over the cap (rare) take the per-account path.
The month (``period``) only names the run in ``rollover_runs``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from creditwallet.core import limits
from creditwallet.server import db
from creditwallet.server.clock import Clock
from creditwallet.server.db import Connection, Pool
from creditwallet.server.ledger import accounts, idempotency, lots, subscriptions
from creditwallet.server.ledger.types import Account

log = logging.getLogger(__name__)

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

# Accounts with something due, in (next_expiry_at, user_id) order after the cursor.
_DUE_ACCOUNTS = """
SELECT user_id, next_expiry_at FROM credits
WHERE next_expiry_at <= $1 AND (next_expiry_at, user_id) > ($2, $3)
ORDER BY next_expiry_at, user_id LIMIT $4
"""

# Locked in user_id order, and re-checked once locked: another run or a writer's touch may
# have swept the account meanwhile.
_LOCK_DUE = f"""
SELECT {Account.COLUMNS}
FROM credits WHERE user_id = ANY($1::text[]) AND next_expiry_at <= $2
ORDER BY user_id FOR UPDATE
"""

# Each account's time is the run's clock or the account's last write, if later.
_DUE_HOLDS = """
SELECT h.user_id, count(*) AS n FROM holds h JOIN credits c ON c.user_id = h.user_id
WHERE h.user_id = ANY($1::text[]) AND h.status = 'pending'
  AND h.expires_at <= GREATEST($2::timestamptz, c.updated_at)
GROUP BY h.user_id
"""

# lots.sweep for many accounts at once: balance_after of each history row is the balance
# before the statement less the running total of the account's expired lots. Each account's
# time is the run's clock (read after the lock) or the account's last write if later.
_EXPIRE_DUE = """
WITH old AS (
    SELECT l.user_id, l.lot_id, l.source, l.remaining_micros, l.expires_at,
           GREATEST($2::timestamptz, c.updated_at) AS at,
           (sum(l.remaining_micros) OVER (
               PARTITION BY l.user_id ORDER BY l.expires_at, l.lot_id))::bigint AS upto
    FROM credit_lots l JOIN credits c ON c.user_id = l.user_id
    WHERE l.user_id = ANY($1::text[]) AND l.remaining_micros > 0
      AND l.expires_at <= GREATEST($2::timestamptz, c.updated_at)
), zeroed AS (
    UPDATE credit_lots l SET remaining_micros = 0 FROM old
    WHERE l.user_id = old.user_id AND l.lot_id = old.lot_id
), history AS (
    INSERT INTO credit_transactions (user_id, type, source, amount_micros, balance_after_micros,
                                     metadata, created_at)
    SELECT old.user_id, 'expire', old.source, -old.remaining_micros, c.balance_micros - old.upto,
           jsonb_build_object('lot_id', old.lot_id::text, 'reason', 'rollover',
                              'expired_at', old.expires_at), old.at
    FROM old JOIN credits c ON c.user_id = old.user_id
    ORDER BY old.user_id, old.expires_at, old.lot_id
    RETURNING user_id, transaction_id
), totals AS (
    SELECT user_id, sum(remaining_micros)::bigint AS expired, max(at) AS at
    FROM old GROUP BY user_id
), moved AS (
    UPDATE credits c SET balance_micros = c.balance_micros - totals.expired, updated_at = totals.at,
        last_transaction_id = (SELECT max(h.transaction_id) FROM history h
                               WHERE h.user_id = totals.user_id)
    FROM totals WHERE c.user_id = totals.user_id
)
SELECT coalesce(sum(expired), 0)::bigint FROM totals
"""

_NEXT_EXPIRY = """
UPDATE credits c SET next_expiry_at = LEAST(
    (SELECT min(expires_at) FROM credit_lots l
     WHERE l.user_id = c.user_id AND l.remaining_micros > 0 AND l.expires_at IS NOT NULL),
    (SELECT min(expires_at) FROM holds h WHERE h.user_id = c.user_id AND h.status = 'pending'))
WHERE c.user_id = ANY($1::text[]) AND c.next_expiry_at <= $2
"""

# Ended, granted, unsettled periods after the cursor, in the order of their index.
_DUE_PERIODS = """
SELECT coalesce(ended_at, period_end) AS ended, subscription_id, period_start, user_id
FROM subscription_periods
WHERE carry_settled_at IS NULL AND lot_id IS NOT NULL AND coalesce(ended_at, period_end) <= $1
  AND (coalesce(ended_at, period_end), subscription_id, period_start) > ($2, $3, $4)
ORDER BY coalesce(ended_at, period_end), subscription_id, period_start LIMIT $5
"""

_LOCK_ACCOUNTS = """
SELECT user_id FROM credits WHERE user_id = ANY($1::text[]) ORDER BY user_id FOR UPDATE
"""

# The claim: each ended period is settled once, by whoever locks its account first. All of
# an account's ended periods are settled together, so its carried credits count once a run.
_SETTLE = """
UPDATE subscription_periods SET carry_settled_at = $2,
    carry_cap_micros = (SELECT max(s.period_credits_micros) FROM subscriptions s
                        WHERE s.user_id = subscription_periods.user_id)
WHERE user_id = ANY($1::text[]) AND lot_id IS NOT NULL AND carry_settled_at IS NULL
  AND coalesce(ended_at, period_end) <= $2
RETURNING user_id
"""

# Subscription credits carried past ended periods, against the plan's allotment.
_CARRIED = """
WITH allot AS (
    SELECT user_id, max(period_credits_micros)::bigint AS allotment FROM subscriptions
    WHERE user_id = ANY($1::text[]) GROUP BY user_id
)
SELECT l.user_id, sum(l.remaining_micros)::bigint AS carried, allot.allotment
FROM credit_lots l
JOIN subscription_periods p ON p.user_id = l.user_id AND p.lot_id = l.lot_id
JOIN allot ON allot.user_id = l.user_id
WHERE l.user_id = ANY($1::text[]) AND l.remaining_micros > 0
  AND (l.expires_at IS NULL OR l.expires_at > $2) AND coalesce(p.ended_at, p.period_end) <= $2
GROUP BY l.user_id, allot.allotment
"""

_START_RUN = "INSERT INTO rollover_runs (period, started_at) VALUES ($1, $2) RETURNING run_id"
# A chunk's counts, added in the chunk's own transaction (the progress is committed work).
_ADD_CHUNK = """
UPDATE rollover_runs SET accounts_processed = accounts_processed + $2, chunks = chunks + 1,
    credits_carried_micros = credits_carried_micros + $3,
    credits_expired_micros = credits_expired_micros + $4, holds_released = holds_released + $5,
    periods_settled = periods_settled + $6, accounts_capped = accounts_capped + $7,
    credits_capped_micros = credits_capped_micros + $8, accounts_settled = accounts_settled + $9
WHERE run_id = $1
"""
_FINISH_RUN = "UPDATE rollover_runs SET finished_at = $2 WHERE run_id = $1"

# The month's progress: accounts its runs brought up to date (committed), and those due now.
PROGRESS = """
SELECT (SELECT coalesce(sum(accounts_processed + accounts_settled), 0)::bigint
        FROM rollover_runs WHERE period = $1) AS done,
       (SELECT count(*) FROM credits WHERE next_expiry_at <= $2)
     + (SELECT count(DISTINCT user_id) FROM subscription_periods
        WHERE carry_settled_at IS NULL AND lot_id IS NOT NULL
          AND coalesce(ended_at, period_end) <= $2) AS due
"""


@dataclasses.dataclass
class Summary:
    """What one run did (every count is this run's own work, not a month's total)."""

    period: str
    accounts_processed: int = 0
    credits_carried_micros: int = 0
    credits_expired_micros: int = 0
    holds_released: int = 0
    chunks: int = 0
    periods_settled: int = 0
    accounts_settled: int = 0
    accounts_capped: int = 0
    credits_capped_micros: int = 0

    def add(self, other: Summary) -> None:
        for field in dataclasses.fields(self):
            if field.name != "period":
                setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


async def run(
    pool: Pool,
    period: str,
    clock: Clock,
    *,
    chunk_accounts: int = limits.ROLLOVER_CHUNK_ACCOUNTS,
    after_chunk: Callable[[Summary], Awaitable[None]] | None = None,
) -> Summary:
    """Record everything due as of the run's start (the run is named ``period``); resumable.

    Which work is due is decided at the start (``now``); each chunk's writes take their time
    from the clock after their locks, never before an account's last write.
    """
    now = clock.now()
    run_id = await db.run_transaction(pool, lambda c: c.fetchval(_START_RUN, period, now))
    total = Summary(period)

    async def step(done: Summary) -> None:
        total.add(done)
        if after_chunk is not None:
            await after_chunk(total)

    at, user = _EPOCH, ""
    while True:
        due = await db.read(
            pool,
            functools.partial(_fetch, query=_DUE_ACCOUNTS, args=(now, at, user, chunk_accounts)),
        )
        if not due:
            break
        at, user = due[-1]["next_expiry_at"], due[-1]["user_id"]
        ids = sorted({r["user_id"] for r in due})
        work = functools.partial(_counted, _expire, run_id, ids=ids, due=now, clock=clock)
        await step(await db.run_transaction(pool, work))
    ended, sub, start = _EPOCH, "", _EPOCH
    while True:
        cursor = (now, ended, sub, start, chunk_accounts)
        rows = await db.read(pool, functools.partial(_fetch, query=_DUE_PERIODS, args=cursor))
        if not rows:
            break
        ended, sub, start = rows[-1]["ended"], rows[-1]["subscription_id"], rows[-1]["period_start"]
        keys = [(r["subscription_id"], r["period_start"], r["user_id"]) for r in rows]
        work = functools.partial(_counted, _settle, run_id, keys=keys, due=now, clock=clock)
        await step(await db.run_transaction(pool, work))
    purged = await idempotency.purge_expired(pool, now)
    await db.run_transaction(pool, lambda c: c.execute(_FINISH_RUN, run_id, clock.now()))
    log.info(
        "rollover finished",
        extra={**dataclasses.asdict(total), "idempotency_records_purged": purged},
    )
    return total


async def _counted(
    chunk: Callable[..., Awaitable[Summary]], run_id: int, conn: Connection, **args: Any
) -> Summary:
    """Run one chunk and add its counts to the run's row, in the chunk's transaction."""
    done = await chunk(conn, **args)
    await conn.execute(
        _ADD_CHUNK,
        run_id,
        done.accounts_processed,
        done.credits_carried_micros,
        done.credits_expired_micros,
        done.holds_released,
        done.periods_settled,
        done.accounts_capped,
        done.credits_capped_micros,
        done.accounts_settled,
    )
    return done


async def _fetch(conn: Connection, *, query: str, args: tuple[object, ...]) -> list[asyncpg.Record]:
    return list(await conn.fetch(query, *args))


async def _expire(conn: Connection, *, ids: list[str], due: dt.datetime, clock: Clock) -> Summary:
    """One transaction: record the due expiries and holds of the chunk's accounts."""
    done = Summary("", chunks=1)
    locked = {r["user_id"]: Account.from_row(r) for r in await conn.fetch(_LOCK_DUE, ids, due)}
    if not locked:
        return done
    now = max(due, clock.now())  # after the locks: the chunk's time (each account's if later)
    done.accounts_processed = len(locked)
    for row in await conn.fetch(_DUE_HOLDS, list(locked), now):
        before = locked.pop(row["user_id"])
        after = await lots.sweep(conn, before, max(now, before.updated_at))
        done.holds_released += row["n"]
        done.credits_expired_micros += before.balance_micros - after.balance_micros
    rest = list(locked)
    done.credits_expired_micros += await conn.fetchval(_EXPIRE_DUE, rest, now) or 0
    await conn.execute(_NEXT_EXPIRY, rest, now)
    return done


async def _settle(
    conn: Connection, *, keys: list[tuple[str, dt.datetime, str]], due: dt.datetime, clock: Clock
) -> Summary:
    """One transaction: settle the carry-over of the chunk's ended periods, capping it."""
    done = Summary("", chunks=1)
    await conn.fetch(_LOCK_ACCOUNTS, sorted({k[2] for k in keys}))
    claimed = await conn.fetch(_SETTLE, sorted({k[2] for k in keys}), due)
    if not claimed:
        return done
    done.periods_settled = len(claimed)
    users = sorted({r["user_id"] for r in claimed})
    done.accounts_settled = len(users)
    for row in await conn.fetch(_CARRIED, users, due):
        carried, allotment = row["carried"], row["allotment"]
        if carried > allotment:
            entry = await accounts.lock(conn, row["user_id"], clock)
            account = entry.account
            after = await subscriptions.cap_carried(conn, account, allotment, due, entry.now)
            capped = account.balance_micros - after.balance_micros
            done.accounts_capped += 1
            done.credits_capped_micros += capped
            done.credits_expired_micros += capped
            carried = allotment
        done.credits_carried_micros += carried
    return done
