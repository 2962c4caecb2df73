"""``make bench``: the figures of docs/performance.md in one run, as a table and as JSON.

What runs: its own embedded PostgreSQL (``.data/bench``), a database loaded with 100,000
accounts in bulk SQL, and the real server as a subprocess
(``python -m creditwallet.server``, uvloop), exactly as ``make run`` starts it. Rows:

- ``grpc``: Debit through the project's own async client, 1/16/64 closed-loop callers,
  spread over 100,000 accounts and all on one hot account;
- ``ceiling``: the same Debit handler in-process (validation, idempotency claim, the ledger
  statements, the stored response) driven straight on an asyncpg pool, no gRPC — the
  debit's own SQL, same concurrency, same durability settings;
- history: Debit and GetBalance latency (1 caller) before and after 10,000,000 extra
  history rows generated with SQL;
- rollover: the time of a Rollover over 100,000 subscribers, when the rollover exists.

Every figure is the median of ``--repeats`` runs (default 3). The machine's two cores are
shared by the bench client, the server and PostgreSQL; that is part of what is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.server import db, migrate
from creditwallet.server.bench import profile
from creditwallet.server.bench.rollover_bench import bench_rollover
from creditwallet.server.bench.workload import (
    ACCOUNTS,
    DEBIT_MICROS,
    HOT_ACCOUNT,
    Figures,
    closed_loop,
    median_of,
    user_for,
)
from creditwallet.server.clock import SystemClock
from creditwallet.server.ledger.batching import DebitBatcher
from creditwallet.server.services import Runtime
from creditwallet.server.services.wallet import WalletService
from creditwallet.v1 import wallet_service_pb2 as wpb

CALLERS = (1, 16, 64)
BALANCE_MICROS = 10**15  # a billion credits each: the bench never runs an account dry
DATABASE = "cw_bench"

_LOAD = [
    """INSERT INTO credits (user_id, balance_micros, created_at, updated_at)
       SELECT 'bench-' || g, $1::bigint, now(), now() FROM generate_series(0, $2::int - 1) g
       UNION ALL SELECT $3::text, $1::bigint, now(), now()""",
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

# Extra history: amount 0, so every balance and invariant stays exactly as it was.
_HISTORY = """
INSERT INTO credit_transactions (user_id, type, amount_micros, balance_after_micros,
    request_id, created_at)
SELECT 'bench-' || (g % $2), 'debit', 0, 0, 'history-' || g, now() - interval '40 days'
FROM generate_series(1, $1) g
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def prepare(base_dsn: str) -> str:
    conn = await asyncpg.connect(base_dsn)
    await conn.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    await conn.execute(f"CREATE DATABASE {DATABASE}")
    await conn.close()
    dsn = db_dsn(base_dsn)
    conn = await asyncpg.connect(dsn)
    await migrate.migrate(conn)
    for statement in _LOAD:
        args: list[Any] = [BALANCE_MICROS]
        if "generate_series" in statement:
            args += [ACCOUNTS, HOT_ACCOUNT]
        if "$1" not in statement:
            args = []
        await conn.execute(statement, *args)
    await conn.execute("VACUUM ANALYZE")
    await conn.close()
    return dsn


def db_dsn(base_dsn: str) -> str:
    head, _, query = base_dsn.partition("?")
    return f"{head.rsplit('/', 1)[0]}/{DATABASE}?{query}"


@contextlib.contextmanager
def server_process(
    dsn: str, tokens: dict[str, str], batching: bool = True
) -> Iterator[tuple[str, int]]:
    port = free_port()
    env = dict(os.environ, DATABASE_URL=dsn, GRPC_ADDRESS=f"127.0.0.1:{port}", LOG_FORMAT="text")
    env["DEBIT_BATCHING"] = "on" if batching else "off"
    env.update({f"{k.upper()}_TOKEN": v for k, v in tokens.items()})
    proc = subprocess.Popen(
        [sys.executable, "-m", "creditwallet.server"], env=env, stderr=subprocess.DEVNULL
    )
    try:
        yield f"127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        proc.wait(30)


async def wait_ready(client: AsyncCreditWalletClient) -> None:
    for _ in range(200):
        with contextlib.suppress(Exception):
            await client.get_balance(HOT_ACCOUNT)
            return
        await asyncio.sleep(0.05)
    raise RuntimeError("server did not come up")


@contextlib.asynccontextmanager
async def in_process_handler(dsn: str) -> AsyncIterator[WalletService]:
    pool = await db.create_pool(dsn, min_size=64, max_size=64)
    try:
        clock = SystemClock()
        yield WalletService(Runtime(pool, clock, DebitBatcher.one_by_one(pool, clock)))
    finally:
        await pool.close()


def debit_request(tag: str, spread: bool, n: int) -> wpb.DebitRequest:
    return wpb.DebitRequest(
        user_id=user_for(spread, n), request_id=f"{tag}-{n}", amount_micros=DEBIT_MICROS
    )


Scenario = tuple[bool, int]  # (spread, callers)
SCENARIOS: list[Scenario] = [(spread, c) for spread in (True, False) for c in CALLERS]


async def grpc_figures(
    args: argparse.Namespace, dsn: str, tokens: dict[str, str], batching: bool
) -> tuple[dict[Scenario, Figures], dict[str, float]]:
    """Debit over gRPC, through the project's client, for every scenario."""
    figures: dict[Scenario, Figures] = {}
    breakdown: dict[str, float] = {}
    run_id = secrets.token_hex(4)
    with server_process(dsn, tokens, batching) as (target, pid):
        clients = [AsyncCreditWalletClient(target, tokens["agent"], retries=0) for _ in range(4)]
        await wait_ready(clients[0])
        for spread, callers in SCENARIOS:
            runs: list[Figures] = []
            for r in range(args.repeats):
                tag = f"g{run_id}-{spread}-{callers}-{r}"

                async def call(n: int, tag: str = tag, spread: bool = spread) -> object:
                    client = clients[n % len(clients)]
                    return await client.wallet.Debit(debit_request(tag, spread, n))

                profiled = args.profile and batching and spread and callers == 64 and r == 0
                with profile.sampling(pid, args.seconds, enabled=profiled) as report:
                    runs.append(await closed_loop(callers, args.seconds, call))
                if profiled:
                    breakdown = report.breakdown()
            figures[(spread, callers)] = median_of(runs)
        for client in clients:
            await client.close()
    return figures, breakdown


async def ceiling_figures(args: argparse.Namespace, dsn: str) -> dict[Scenario, Figures]:
    """The same Debit handler in-process on an asyncpg pool: the debit's SQL, no gRPC."""
    figures: dict[Scenario, Figures] = {}
    run_id = secrets.token_hex(4)
    async with in_process_handler(dsn) as handler:
        for spread, callers in SCENARIOS:
            runs: list[Figures] = []
            for r in range(args.repeats):
                tag = f"s{run_id}-{spread}-{callers}-{r}"

                async def call(n: int, tag: str = tag, spread: bool = spread) -> object:
                    request = debit_request(tag, spread, n)
                    return await handler.Debit(request, None)  # type: ignore[arg-type]

                runs.append(await closed_loop(callers, args.seconds, call))
            figures[(spread, callers)] = median_of(runs)
    return figures


def combine(
    per_tx: dict[Scenario, Figures],
    grouped: dict[Scenario, Figures],
    ceiling: dict[Scenario, Figures],
) -> list[dict[str, Any]]:
    rows = []
    for key in SCENARIOS:
        g, b, s = per_tx[key], grouped[key], ceiling[key]
        rows.append(
            {
                "load": "spread" if key[0] else "hot",
                "callers": key[1],
                "grpc": dataclasses.asdict(g),
                "grpc_group_commit": dataclasses.asdict(b),
                "ceiling": dataclasses.asdict(s),
                "ratio": g.per_second / s.per_second,
                "ratio_group_commit": b.per_second / s.per_second,
                "p99_ratio": g.p99_ms / s.p99_ms,
                "p99_ratio_group_commit": b.p99_ms / s.p99_ms,
            }
        )
        print_row(rows[-1])
    return rows


async def history_rows(
    args: argparse.Namespace, target: str, token: str, dsn: str
) -> dict[str, Any]:
    client = AsyncCreditWalletClient(target, token, retries=0)
    await wait_ready(client)

    async def measure(label: str) -> dict[str, Any]:
        tag = f"{label}-{secrets.token_hex(3)}"

        async def debit(n: int) -> object:
            return await client.wallet.Debit(debit_request(tag, True, n))

        async def balance(n: int) -> object:
            return await client.get_balance(user_for(True, n))

        d = [await closed_loop(1, args.seconds, debit) for _ in range(args.repeats)]
        b = [await closed_loop(1, args.seconds, balance) for _ in range(args.repeats)]
        return {
            "debit": dataclasses.asdict(median_of(d)),
            "get_balance": dataclasses.asdict(median_of(b)),
        }

    empty = await measure("empty")
    conn = await asyncpg.connect(dsn)
    started = time.perf_counter()
    await conn.execute(_HISTORY, args.history_rows, ACCOUNTS, timeout=3600)
    await conn.execute("VACUUM ANALYZE credit_transactions", timeout=3600)
    load_seconds = time.perf_counter() - started
    total = await conn.fetchval("SELECT count(*) FROM credit_transactions")
    await conn.close()
    full = await measure("full")
    await client.close()
    result = {
        "empty": empty,
        "full": full,
        "history_rows": total,
        "history_load_seconds": load_seconds,
    }
    for what in ("debit", "get_balance"):
        result[f"{what}_p50_growth"] = full[what]["p50_ms"] / empty[what]["p50_ms"]
    print(
        f"history {total:,} rows (loaded in {load_seconds:.0f}s): "
        f"Debit p50 {empty['debit']['p50_ms']:.2f} -> {full['debit']['p50_ms']:.2f} ms, "
        f"GetBalance p50 {empty['get_balance']['p50_ms']:.2f} -> "
        f"{full['get_balance']['p50_ms']:.2f} ms"
    )
    return result


async def rollover_row(base_dsn: str) -> dict[str, Any]:
    conn = await asyncpg.connect(base_dsn)
    await conn.execute("DROP DATABASE IF EXISTS cw_rollover_bench WITH (FORCE)")
    await conn.execute("CREATE DATABASE cw_rollover_bench")
    await conn.close()
    head, _, query = base_dsn.partition("?")
    seconds = await bench_rollover(f"{head.rsplit('/', 1)[0]}/cw_rollover_bench?{query}", ACCOUNTS)
    return {"subscribers": ACCOUNTS, "seconds": seconds}


def print_row(row: dict[str, Any]) -> None:
    g, b, s = row["grpc"], row["grpc_group_commit"], row["ceiling"]
    print(
        f"{row['load']:>6} {row['callers']:>3} | "
        f"{g['per_second']:>6.0f}/s {g['p50_ms']:>6.2f} {g['p99_ms']:>7.2f} | "
        f"{b['per_second']:>6.0f}/s {b['p50_ms']:>6.2f} {b['p99_ms']:>7.2f} | "
        f"{s['per_second']:>6.0f}/s {s['p50_ms']:>6.2f} {s['p99_ms']:>7.2f} | "
        f"{row['ratio']:>5.2f} {row['ratio_group_commit']:>5.2f} | "
        f"{row['p99_ratio']:>5.2f} {row['p99_ratio_group_commit']:>5.2f}",
        flush=True,
    )


HEADER = (
    "  load  n  | gRPC Debit, per-tx      | gRPC Debit, group commit | ceiling: in-process SQL "
    "| ratio     | p99 ratio\n"
    "           |  rate    p50     p99    |  rate    p50     p99     |  rate    p50     p99    "
    "| tx    gc  | tx    gc"
)


async def main(args: argparse.Namespace) -> int:
    data = Path(".data/bench")
    if args.fresh:
        shutil.rmtree(data, ignore_errors=True)
    base_dsn = db.start_embedded(data)
    dsn = await prepare(base_dsn)
    tokens = {s: secrets.token_urlsafe(16) for s in ("agent", "billing", "admin")}
    print(f"make bench: {ACCOUNTS:,} accounts, {args.seconds}s per run, median of {args.repeats}")
    per_tx, _ = await grpc_figures(args, dsn, tokens, batching=False)
    grouped, breakdown = await grpc_figures(args, dsn, tokens, batching=True)
    ceiling = await ceiling_figures(args, dsn)
    print(HEADER)
    rows = combine(per_tx, grouped, ceiling)
    if breakdown:
        print("server profile (group commit, spread, 64 callers), % of the event-loop thread:")
        print("  " + ", ".join(f"{k} {v}%" for k, v in breakdown.items()))
    with server_process(dsn, tokens) as (target, _):
        history = await history_rows(args, target, tokens["admin"], dsn)
    rollover = await rollover_row(base_dsn)
    result = {
        "when": dt.datetime.now(dt.UTC).isoformat(),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "repeats": args.repeats,
        "seconds_per_run": args.seconds,
        "debit": rows,
        "profile": breakdown,
        "history": history,
        "rollover": rollover,
    }
    write_json(Path(args.output), result)
    print(f"figures written to {args.output}")
    return 0


def write_json(path: Path, result: dict[str, Any]) -> None:
    path.write_text(json.dumps(result, indent=2) + "\n")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="make bench", description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--history-rows", type=int, default=10_000_000)
    parser.add_argument("--output", default="server/bench/results.json")
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--fresh", action="store_true", help="recreate the bench cluster")
    return parser.parse_args(argv)


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    sys.exit(asyncio.run(main(parse())))
