"""What the outbox costs a debit: the same Debit handler on a schema without and with it.

``python -m creditwallet.server.bench.events_cost`` starts its own embedded PostgreSQL
(``.data/bench-events``), creates two databases on the current schema, ``before`` (the
outbox's triggers on the debit path disabled: ``OUTBOX_TRIGGERS``) and ``after`` (as
deployed, so the outbox writes an event for every debit and judges the balance alerts),
loads the same accounts into both, and runs the in-process Debit handler (one transaction
per debit) against each in alternating rounds, so that both see the same machine. Prints
per-debit latency at one caller and throughput at 16, the median of the rounds, and the
ratio after/before.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import statistics
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
from creditwallet.server import db, migrate
from creditwallet.server.bench.workload import Figures, closed_loop
from creditwallet.server.clock import SystemClock
from creditwallet.server.ledger.batching import DebitBatcher
from creditwallet.server.services import Runtime
from creditwallet.server.services.wallet import WalletService
from creditwallet.v1 import wallet_service_pb2 as wpb

EXTRA = [s for s in os.environ.get("COST_EXTRA", "").split(";;") if s.strip()]
# What the outbox adds to a debit: its history row's event, and the balance alerts' judgement.
OUTBOX_TRIGGERS = (
    ("credit_transactions", "events_history_rows"),
    ("credits", "events_available_changed"),
)
ACCOUNTS = 2000
BALANCE_MICROS = 10**15

_LOAD = [
    """INSERT INTO credits (user_id, balance_micros, created_at, updated_at)
       SELECT 'cost-' || g, $1::bigint, now(), now() FROM generate_series(0, $2::int - 1) g""",
    """INSERT INTO credit_transactions (user_id, transaction_id, type, source, amount_micros,
           balance_after_micros, created_at)
       SELECT user_id, row_number() OVER (ORDER BY user_id), 'grant', 'top_up', $1, $1, now()
       FROM credits""",
    """INSERT INTO credit_lots (user_id, source, amount_micros, remaining_micros, granted_at,
           transaction_id)
       SELECT user_id, 'top_up', $1, $1, now(), transaction_id FROM credit_transactions""",
    """SELECT setval(pg_get_serial_sequence('credit_transactions', 'transaction_id'),
           (SELECT max(transaction_id) FROM credit_transactions))""",
]


async def prepare(base: str, name: str, outbox: bool, async_commit: bool) -> str:
    conn = await asyncpg.connect(base)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name}")
        await conn.execute(f"CREATE DATABASE {name}")
        if async_commit:  # no WAL flush wait: what is left is the statements' own work
            await conn.execute(f"ALTER DATABASE {name} SET synchronous_commit = off")
    finally:
        await conn.close()
    head, _, query = base.partition("?")
    dsn = f"{head.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")
    conn = await asyncpg.connect(dsn)
    try:
        await migrate.migrate(conn)
        if not outbox:
            for table, trigger in OUTBOX_TRIGGERS:
                await conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER {trigger}")
        # The load is the same rows in both; no events for it.
        await conn.execute("SET session_replication_role = replica")
        for statement in _LOAD:
            args: tuple[int, ...] = ()
            if "generate_series" in statement:
                args = (BALANCE_MICROS, ACCOUNTS)
            elif "$1" in statement:
                args = (BALANCE_MICROS,)
            await conn.execute(statement, *args)
        await conn.execute("RESET session_replication_role")
        if outbox:
            for statement in EXTRA:
                await conn.execute(statement)
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    return dsn


@contextlib.asynccontextmanager
async def handler(dsn: str) -> AsyncIterator[WalletService]:
    pool = await db.create_pool(dsn, min_size=16, max_size=20)
    try:
        clock = SystemClock()
        # Group commit off: one transaction per debit, as the figures describe.
        yield WalletService(Runtime(pool, clock, DebitBatcher.one_by_one(pool, clock)))
    finally:
        await pool.close()


async def run_round(service: WalletService, callers: int, seconds: float) -> Figures:
    tag = secrets.token_hex(4)

    async def call(n: int) -> object:
        request = wpb.DebitRequest(
            user_id=f"cost-{(n * 7919) % ACCOUNTS}",
            request_id=f"{tag}-{callers}-{n}",
            amount_micros=1_000,
        )
        return await service.Debit(request, None)  # type: ignore[arg-type]

    return await closed_loop(callers, seconds, call)


async def main_async(args: argparse.Namespace) -> None:
    data = Path(args.data_dir)
    base = db.start_embedded(data)
    dsns = {
        "before": await prepare(base, "cw_cost_before", False, args.async_commit),
        "after": await prepare(base, "cw_cost_after", True, args.async_commit),
    }
    results: dict[tuple[str, int], list[Figures]] = {}
    async with handler(dsns["before"]) as before, handler(dsns["after"]) as after:
        services = {"before": before, "after": after}
        for _ in range(args.rounds):
            for callers in (1, 16):
                for name in ("before", "after"):
                    figures = await run_round(services[name], callers, args.seconds)
                    results.setdefault((name, callers), []).append(figures)
    for callers in (1, 16):
        row = {}
        for name in ("before", "after"):
            runs = results[(name, callers)]
            row[name] = (
                statistics.median(r.per_second for r in runs),
                statistics.median(r.p50_ms for r in runs),
            )
        ratio = row["after"][0] / row["before"][0]
        print(
            f"{callers:>2} caller(s): before {row['before'][0]:7.0f}/s p50 "
            f"{row['before'][1]:.3f} ms | after {row['after'][0]:7.0f}/s p50 "
            f"{row['after'][1]:.3f} ms | after/before rate {ratio:.2f}, "
            f"+{(row['after'][1] - row['before'][1]) * 1000:.0f} us p50"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--data-dir", default=".data/bench-events")
    parser.add_argument(
        "--async-commit",
        action="store_true",
        help="synchronous_commit off, so the figures show the statements' cost, not fsync",
    )
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
