"""Rollover of N subscribers, for ``make bench``: load with set-based SQL, time the run.

Each subscriber has an active monthly subscription whose previous period ended, two
subscription lots (the expired one of two periods ago, which the rollover records as
``expire``, and the carried one of the last period) and a top-up. Timed: one
``rollover.run`` over all of them, chunked as in production.

    .venv/bin/python -m creditwallet.server.bench.rollover_bench  # embedded PostgreSQL, 100,000
    .venv/bin/python -m creditwallet.server.bench.rollover_bench 20000 --no-triggers
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
from creditwallet.server import db, migrate
from creditwallet.server.bench import cpu
from creditwallet.server.clock import ManualClock
from creditwallet.server.ledger import rollover

_LOAD = """
WITH users AS (
    SELECT 'bench-' || lpad(i::text, 8, '0') AS user_id FROM generate_series(1, $1) AS i
), accounts AS (
    INSERT INTO credits (user_id, balance_micros, next_expiry_at, created_at, updated_at)
    SELECT user_id, 600000000, $2::timestamptz - interval '1 day',
           $2::timestamptz - interval '90 days', $2::timestamptz - interval '1 day'
    FROM users RETURNING user_id
), subs AS (
    INSERT INTO subscriptions (subscription_id, customer_id, user_id, status, price_id,
        period_credits_micros, current_period_start, current_period_end, last_event_at,
        created_at, updated_at)
    SELECT 'sub_' || user_id, 'cus_' || user_id, user_id, 'active', 'price_cw_monthly_250',
           250000000, $2::timestamptz - interval '1 day', $2::timestamptz + interval '30 days',
           $2::timestamptz - interval '1 day', $2::timestamptz - interval '90 days', $2::timestamptz
    FROM accounts RETURNING user_id
)
INSERT INTO credit_lots (user_id, source, amount_micros, remaining_micros, granted_at,
                         expires_at, transaction_id, grant_key)
SELECT user_id, src, 250000000, rem, $2::timestamptz - g, $2::timestamptz + e, 0, key || user_id
FROM subs, (VALUES
    ('subscription', 100000000::bigint, interval '61 days', interval '-1 day', 'old:'),
    ('subscription', 250000000::bigint, interval '31 days', interval '29 days', 'last:'),
    ('top_up', 250000000::bigint, interval '40 days', NULL::interval, 'top:')
) AS v(src, rem, g, e, key)
"""

_HISTORY = """
INSERT INTO credit_transactions (user_id, type, source, amount_micros, balance_after_micros,
                                 created_at)
SELECT user_id, 'grant', 'adjustment', 600000000, 600000000, $1::timestamptz - interval '90 days'
FROM credits WHERE user_id LIKE 'bench-%'
"""

_PERIODS = """
INSERT INTO subscription_periods (subscription_id, period_start, period_end, user_id,
    credits_micros, lot_id, transaction_id, recorded_at, granted_at)
SELECT 'sub_' || l.user_id, l.granted_at, l.granted_at + interval '30 days', l.user_id,
       250000000, l.lot_id, 0, l.granted_at, l.granted_at
FROM credit_lots l WHERE l.source = 'subscription' AND l.user_id LIKE 'bench-%'
"""


async def bench_rollover(dsn: str, accounts: int, *, triggers: bool = True) -> float:
    """Seconds one Rollover takes over ``accounts`` freshly loaded subscribers.

    ``triggers=False`` (``--no-triggers``, a diagnosis, never the reported figure): the
    rollover's connections run without the database's triggers (the event outbox's among
    them), to tell what they cost (needs a superuser DSN).
    """
    conn = await asyncpg.connect(dsn)
    now = dt.datetime.now(dt.UTC)
    try:
        await migrate.migrate(conn)
        if not triggers:
            database = await conn.fetchval("SELECT current_database()")
            await conn.execute(f"ALTER DATABASE {database} SET session_replication_role = replica")
        async with conn.transaction():
            await conn.execute(_LOAD, accounts, now)
            await conn.execute(_HISTORY, now)
            await conn.execute(_PERIODS)
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    pool = await db.create_pool(dsn)
    try:
        postmaster = _parent(await pool.fetchval("SELECT pg_backend_pid()"))
        meter = cpu.Meter({"postgres": [postmaster], "rollover": [os.getpid()]})
        meter.start()
        started = time.perf_counter()
        summary = await rollover.run(pool, now.strftime("%Y-%m"), ManualClock(now))
        seconds = time.perf_counter() - started
        cores = meter.stop()
        # The next day's run, with nothing due: it reads the due indexes, not every account.
        started = time.perf_counter()
        later = ManualClock(now + dt.timedelta(hours=1))
        quiet = await rollover.run(pool, now.strftime("%Y-%m"), later)
        quiet_seconds = time.perf_counter() - started
    finally:
        await pool.close()
    assert summary.accounts_processed >= accounts, summary
    assert quiet.accounts_processed == quiet.periods_settled == 0, quiet
    print(
        f"rollover: {summary.accounts_processed} accounts in {seconds:.2f} s "
        f"({summary.chunks} chunks, expired {summary.credits_expired_micros // 10**6} credits, "
        f"carried {summary.credits_carried_micros // 10**6} credits, "
        f"{summary.periods_settled} periods settled); "
        f"a run with nothing due: {quiet_seconds * 1000:.1f} ms"
    )
    # CPU per account: what the run costs whatever else the machine is doing meanwhile.
    per_account = {k: v * seconds / summary.accounts_processed * 1e6 for k, v in cores.items()}
    print(
        "rollover CPU: "
        + ", ".join(
            f"{k} {v:.2f} cores ({per_account[k]:.0f} us/account)" for k, v in cores.items()
        )
        + f"; machine load {os.getloadavg()[0]:.1f}"
    )
    return seconds


def _parent(pid: int) -> int:
    """The parent of a PostgreSQL backend: its postmaster, whose tree is all of PostgreSQL."""
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


async def _main(accounts: int, triggers: bool) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="cw-bench-", dir="/tmp"))
    base = db.start_embedded(data_dir)
    conn = await asyncpg.connect(base)
    try:
        await conn.execute("DROP DATABASE IF EXISTS cw_rollover_bench")
        await conn.execute("CREATE DATABASE cw_rollover_bench")
    finally:
        await conn.close()
    head, _, query = base.partition("?")
    dsn = f"{head.rsplit('/', 1)[0]}/cw_rollover_bench" + (f"?{query}" if query else "")
    try:
        await bench_rollover(dsn, accounts, triggers=triggers)
    finally:  # a million subscribers take gigabytes: give them back to the disk
        conn = await asyncpg.connect(base)
        try:
            await conn.execute("DROP DATABASE IF EXISTS cw_rollover_bench WITH (FORCE)")
        finally:
            await conn.close()


if __name__ == "__main__":
    numbers = [a for a in sys.argv[1:] if a.isdigit()]
    asyncio.run(_main(int(numbers[0]) if numbers else 100_000, "--no-triggers" not in sys.argv))
