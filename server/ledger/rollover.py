"""The monthly rollover (docs/billing.md): every account's bookkeeping up to date, in chunks.

What "up to date as of now" means: expired holds released, lots past their ``expires_at``
recorded as ``expire`` transactions, and subscription credits carried from periods that
ended capped at one allotment. It never grants: grants follow payments only. It also
deletes idempotency records past their retention (``limits.IDEMPOTENCY_RETENTION_DAYS``).

How it stays exactly-once and cheap:

- Accounts are walked by keyset over ``credits.user_id`` in chunks of
  ``limits.ROLLOVER_CHUNK_ACCOUNTS``, each chunk one transaction, so a million accounts never
  mean one huge transaction and a crash loses at most the chunk in flight.
- Each chunk first *claims* its accounts for the month in ``rollover_accounts`` (primary key
  (user_id, period), inserted in user_id order). A concurrent run blocks on the same keys
  until the first commits and then skips them; a rerun after a crash skips what committed.
  Claim, work and marker commit together, so an account is processed once per month.
- The common work is set-based: one statement expires the due lots of the whole chunk and
  writes their history rows. Accounts with an expired hold (rare) take the per-account path
  (``lots.sweep``), as do the rare accounts whose carried credits exceed the cap.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Awaitable, Callable

import asyncpg
from creditwallet.core import limits
from creditwallet.server import db
from creditwallet.server.clock import Clock
from creditwallet.server.db import Connection, Pool
from creditwallet.server.ledger import accounts, idempotency, lots, subscriptions
from creditwallet.server.ledger.types import Account

log = logging.getLogger(__name__)

_NEXT_IDS = "SELECT user_id FROM credits WHERE user_id > $1 ORDER BY user_id LIMIT $2"

_CLAIM = """
INSERT INTO rollover_accounts (user_id, period, processed_at)
SELECT u, $2, $3 FROM unnest($1::text[]) AS u ORDER BY u
ON CONFLICT (user_id, period) DO NOTHING
RETURNING user_id
"""

_LOCK = f"""
SELECT {Account.COLUMNS}
FROM credits WHERE user_id = ANY($1::text[]) ORDER BY user_id FOR UPDATE
"""

_DUE_HOLDS = """
SELECT user_id, count(*) AS n FROM holds
WHERE user_id = ANY($1::text[]) AND status = 'pending' AND expires_at <= $2 GROUP BY user_id
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
           jsonb_build_object('lot_id', old.lot_id::text, 'reason', 'rollover'), old.at
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

# Subscription credits carried from periods that ended, against the plan's allotment.
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
  AND (l.expires_at IS NULL OR l.expires_at > $2) AND p.period_end <= $2
GROUP BY l.user_id, allot.allotment
"""

_START_RUN = "INSERT INTO rollover_runs (period, started_at) VALUES ($1, $2) RETURNING run_id"
_FINISH_RUN = """
UPDATE rollover_runs SET finished_at = $2, accounts_processed = $3, chunks = $4,
    credits_carried_micros = $5, credits_expired_micros = $6, holds_released = $7
WHERE run_id = $1
"""


@dataclasses.dataclass
class Summary:
    period: str
    accounts_processed: int = 0
    credits_carried_micros: int = 0
    credits_expired_micros: int = 0
    holds_released: int = 0
    chunks: int = 0

    def add(self, other: Summary) -> None:
        self.accounts_processed += other.accounts_processed
        self.credits_carried_micros += other.credits_carried_micros
        self.credits_expired_micros += other.credits_expired_micros
        self.holds_released += other.holds_released
        self.chunks += other.chunks


async def run(
    pool: Pool,
    period: str,
    clock: Clock,
    *,
    chunk_accounts: int = limits.ROLLOVER_CHUNK_ACCOUNTS,
    after_chunk: Callable[[Summary], Awaitable[None]] | None = None,
) -> Summary:
    """Roll every account over for ``period``; resumable and exactly-once."""
    now = clock.now()
    run_id = await db.run_transaction(pool, lambda c: c.fetchval(_START_RUN, period, now))
    total = Summary(period)
    cursor = ""
    while True:
        ids = await db.read(pool, functools.partial(_next_ids, after=cursor, limit=chunk_accounts))
        if not ids:
            break
        cursor = ids[-1]["user_id"]
        user_ids = [r["user_id"] for r in ids]
        done = await db.run_transaction(
            pool, functools.partial(_chunk, user_ids=user_ids, period=period, clock=clock)
        )
        total.add(done)
        if after_chunk is not None:
            await after_chunk(total)
    purged = await idempotency.purge_expired(pool, now)
    await db.run_transaction(
        pool,
        lambda c: c.execute(
            _FINISH_RUN,
            run_id,
            clock.now(),
            total.accounts_processed,
            total.chunks,
            total.credits_carried_micros,
            total.credits_expired_micros,
            total.holds_released,
        ),
    )
    log.info(
        "rollover finished",
        extra={**dataclasses.asdict(total), "idempotency_records_purged": purged},
    )
    return total


async def _next_ids(conn: Connection, *, after: str, limit: int) -> list[asyncpg.Record]:
    return list(await conn.fetch(_NEXT_IDS, after, limit))


async def _chunk(conn: Connection, *, user_ids: list[str], period: str, clock: Clock) -> Summary:
    """One transaction: claim the chunk's unprocessed accounts and bring them up to date."""
    done = Summary(period, chunks=1)
    claimed = [r["user_id"] for r in await conn.fetch(_CLAIM, user_ids, period, clock.now())]
    if not claimed:
        return done
    done.accounts_processed = len(claimed)
    locked = {r["user_id"]: Account.from_row(r) for r in await conn.fetch(_LOCK, claimed)}
    now = clock.now()  # after the locks: the chunk's time (each account's own if later)
    for row in await conn.fetch(_DUE_HOLDS, claimed, now):
        before = locked.pop(row["user_id"])
        after = await lots.sweep(conn, before, max(now, before.updated_at))
        done.holds_released += row["n"]
        done.credits_expired_micros += before.balance_micros - after.balance_micros
    rest = list(locked)
    done.credits_expired_micros += await conn.fetchval(_EXPIRE_DUE, rest, now) or 0
    await conn.execute(_NEXT_EXPIRY, rest, now)
    for row in await conn.fetch(_CARRIED, claimed, now):
        carried, allotment = row["carried"], row["allotment"]
        if carried > allotment:
            entry = await accounts.lock(conn, row["user_id"], clock)
            account = entry.account
            after = await subscriptions.cap_carried(conn, account, allotment, entry.now, entry.now)
            done.credits_expired_micros += account.balance_micros - after.balance_micros
            carried = allotment
        done.credits_carried_micros += carried
    return done
