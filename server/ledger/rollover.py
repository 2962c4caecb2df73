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
loses at most the chunks in flight (the next run does them). Up to
``limits.ROLLOVER_WORKERS`` chunks run at once, each on its own connection. A chunk of the
first walk also settles its accounts' ended periods, so the second walk meets only accounts
with nothing else due. Each chunk is set-based (``rollover_chunks``): a few statements for
all of its accounts, whatever their number.
The month (``period``) only names the run in ``rollover_runs``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
from creditwallet.core import limits
from creditwallet.server import db
from creditwallet.server.clock import Clock
from creditwallet.server.db import Connection, Pool
from creditwallet.server.ledger import idempotency, rollover_chunks

log = logging.getLogger(__name__)

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

# Accounts with something due, in (next_expiry_at, user_id) order after the cursor.
_DUE_ACCOUNTS = """
SELECT user_id, next_expiry_at FROM credits
WHERE next_expiry_at <= $1 AND (next_expiry_at, user_id) > ($2, $3)
ORDER BY next_expiry_at, user_id LIMIT $4
"""

# Ended, granted, unsettled periods after the cursor, in the order of their index.
_DUE_PERIODS = """
SELECT coalesce(ended_at, period_end) AS ended, subscription_id, period_start, user_id
FROM subscription_periods
WHERE carry_settled_at IS NULL AND lot_id IS NOT NULL AND coalesce(ended_at, period_end) <= $1
  AND (coalesce(ended_at, period_end), subscription_id, period_start) > ($2, $3, $4)
ORDER BY coalesce(ended_at, period_end), subscription_id, period_start LIMIT $5
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


Summary = rollover_chunks.Summary


async def run(
    pool: Pool,
    period: str,
    clock: Clock,
    *,
    chunk_accounts: int = limits.ROLLOVER_CHUNK_ACCOUNTS,
    workers: int = limits.ROLLOVER_WORKERS,
    after_chunk: Callable[[Summary], Awaitable[None]] | None = None,
) -> Summary:
    """Record everything due as of the run's start (the run is named ``period``); resumable.

    Which work is due is decided at the start (``now``); each chunk's writes take their time
    from the clock after their locks, never before an account's last write. Up to ``workers``
    chunks are in flight at once, each on its own connection (the chunks of one walk are
    disjoint, so they never wait on each other). ``after_chunk`` (tests) is called after each
    chunk commits and before the next one starts: chunks then run one at a time.
    """
    now = clock.now()
    run_id = await db.run_transaction(pool, lambda c: c.fetchval(_START_RUN, period, now))
    total = Summary(period)
    in_flight = 1 if after_chunk is not None else workers

    async def step(done: Summary) -> None:
        total.add(done)
        if after_chunk is not None:
            await after_chunk(total)

    async def accounts_due() -> AsyncIterator[list[str]]:
        at, user = _EPOCH, ""
        while True:
            args = (now, at, user, chunk_accounts)
            due = await db.read(pool, functools.partial(_fetch, query=_DUE_ACCOUNTS, args=args))
            if not due:
                return
            at, user = due[-1]["next_expiry_at"], due[-1]["user_id"]
            yield sorted({r["user_id"] for r in due})

    async def periods_due() -> AsyncIterator[list[str]]:
        ended, sub, start = _EPOCH, "", _EPOCH
        while True:
            cursor = (now, ended, sub, start, chunk_accounts)
            rows = await db.read(pool, functools.partial(_fetch, query=_DUE_PERIODS, args=cursor))
            if not rows:
                return
            last = rows[-1]
            ended, sub, start = last["ended"], last["subscription_id"], last["period_start"]
            yield sorted({r["user_id"] for r in rows})

    def expire(ids: list[str]) -> Callable[[Connection], Awaitable[Summary]]:
        return functools.partial(
            _counted, rollover_chunks.expire, run_id, ids=ids, due=now, clock=clock
        )

    def settle(users: list[str]) -> Callable[[Connection], Awaitable[Summary]]:
        return functools.partial(
            _counted, rollover_chunks.settle, run_id, users=users, due=now, clock=clock
        )

    await _walk(pool, accounts_due(), expire, in_flight, step)
    await _walk(pool, periods_due(), settle, in_flight, step)
    purged = await idempotency.purge_expired(pool, now)
    await db.run_transaction(pool, lambda c: c.execute(_FINISH_RUN, run_id, clock.now()))
    log.info(
        "rollover finished",
        extra={**dataclasses.asdict(total), "idempotency_records_purged": purged},
    )
    return total


async def _walk(
    pool: Pool,
    chunks: AsyncIterator[list[str]],
    work: Callable[[list[str]], Callable[[Connection], Awaitable[Summary]]],
    in_flight: int,
    step: Callable[[Summary], Awaitable[None]],
) -> None:
    """Run each chunk in its own transaction, up to ``in_flight`` at once, in keyset order.

    A failure stops the walk: no new chunk starts, the ones in flight finish (committed or
    rolled back: a transaction is never abandoned midway), and the first error is raised.
    """
    running: set[asyncio.Future[Summary]] = set()
    try:
        async for ids in chunks:
            while len(running) >= in_flight:
                finished, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    await step(task.result())
            running.add(asyncio.ensure_future(db.run_transaction(pool, work(ids))))
        for task in asyncio.as_completed(list(running)):
            await step(await task)
        running.clear()
    finally:
        if running:
            await asyncio.gather(*running, return_exceptions=True)


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
