"""``make bench``: Debit, BatchDebit and their ceilings, measured in one run, as ratios.

What runs: its own embedded PostgreSQL (``.data/bench``), a database of 100,000 accounts loaded
with bulk SQL, the real server as a subprocess (``python -m creditwallet.server``, uvloop) with
``GRPC_WORKERS`` 1 and then 2, and a load generator of several client processes
(``loadgen.py``). Every row is measured at the same concurrency (1, 16, 64 closed-loop callers)
on the same cluster with the same durability (``synchronous_commit`` as configured):

- (a) **gRPC alone**: the same server answering its health ``Check`` through the same client:
  the floor of any RPC on this machine;
- (b) **PostgreSQL alone**: pgbench running the statements the server sends for one debit
  (captured from the real debit route, ``capture.py``), spread and hot;
- (c) **PostgreSQL batched**: pgbench running one transaction that debits 64 accounts
  set-wise (``pgbench.BATCHED``), in debits/s;
- **Debit** (group commit, spread over the accounts and on one hot account) and **BatchDebit**
  (100 debits per call), with their ratios to (a), (b) and (c);
- the in-process handler (the Debit servicer called directly on an asyncpg pool, no gRPC):
  what the Python of a debit costs without the RPC around it;
- history: Debit/GetBalance latency (1 caller) on an empty ledger and after N extra history
  rows; rollover: one Rollover over N subscribers.

Every figure is the median of ``--repeats`` runs. ``--full`` takes the figures of the
performance targets (10,000,000 history rows, 1,000,000 subscribers, longer runs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.server import db, migrate
from creditwallet.server.bench import capture, cpu, pgbench, profile
from creditwallet.server.bench.loadgen import Call, LoadGenerator
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
BATCH_SIZE = 100
BATCH_CALLERS = (1, 16)
BATCHED_CLIENTS = (1, 2, 16)
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
    """UPDATE credits c SET last_transaction_id = t.transaction_id
       FROM credit_transactions t WHERE t.user_id = c.user_id""",
]

# Extra history: amount 0, so every balance and invariant stays exactly as it was. Loaded
# without the database's triggers (as the cluster's superuser, session_replication_role =
# replica): as if its events had been delivered and purged long ago, instead of 10,000,000
# per-row trigger calls that would take the bench far past its minutes. One row in
# USAGE_SHARE goes to the usage account (USAGE_ACCOUNT), spread evenly over the last 60 days,
# 8 agents and sessions of $6 debits: an account with millions of rows for GetUsage.
# $5 prefixes the request_ids: the seed below and the load are two runs of this statement.
_HISTORY = """
INSERT INTO credit_transactions (user_id, type, amount_micros, balance_after_micros,
    request_id, agent_id, session_id, created_at)
SELECT CASE WHEN g % $3 = 0 THEN $4 ELSE 'bench-' || (g % $2) END, 'debit', 0, 0,
       $5 || g,
       CASE WHEN g % $3 = 0 THEN 'agent-' || (g / $3 % 8) END,
       CASE WHEN g % $3 = 0 THEN 'session-' || (g / $3 / $6) END,
       CASE WHEN g % $3 = 0
            THEN now() - interval '60 days' + (g::float8 / $1) * interval '60 days'
            ELSE now() - interval '40 days' END
FROM generate_series(1, $1) g
"""
USAGE_ACCOUNT = "bench-usage"
USAGE_SHARE = 10
# Loaded before the empty ledger is measured, so that the usage account already has the groups
# GetUsage reports (every agent on every day of the 30): the empty and full measurements read
# the same 240 groups, and the ratio shows what the history's size costs, not the groups'
# number. 4,800 of these rows are the usage account's: 80 a day, all 8 agents each day, in
# sessions of 10 debits, so the 30 days already hold 240 sessions and the page of 100 sessions
# is full in both measurements; the load's sessions are of 1,000 debits.
HISTORY_SEED_ROWS = 48_000
HISTORY_SEED_SESSION_DEBITS = 10
HISTORY_SESSION_DEBITS = 1_000

# The usage rollups of the rows loaded without triggers, as the migration builds them for a
# history that predates it (the triggers keep them for every later debit).
_HISTORY_ROLLUPS = [
    """INSERT INTO usage_sessions AS u (user_id, day, session_id, agent_id, member_id,
           debited_micros, reversed_micros, debits, reversals)
       SELECT user_id, cw_utc_day(created_at), coalesce(session_id, ''), coalesce(agent_id, ''),
              '', sum(-amount_micros), 0, count(*), 0
       FROM credit_transactions WHERE request_id LIKE $1 || '%' GROUP BY 1, 2, 3, 4
       ON CONFLICT (user_id, day, session_id, agent_id, member_id) DO UPDATE SET
           debited_micros = u.debited_micros + EXCLUDED.debited_micros,
           debits = u.debits + EXCLUDED.debits""",
    """INSERT INTO usage_daily AS u (user_id, day, agent_id, member_id, debited_micros,
           reversed_micros, debits, reversals)
       SELECT user_id, cw_utc_day(created_at), coalesce(agent_id, ''), '',
              sum(-amount_micros), 0, count(*), 0
       FROM credit_transactions WHERE request_id LIKE $1 || '%' GROUP BY 1, 2, 3
       ON CONFLICT (user_id, day, agent_id, member_id) DO UPDATE SET
           debited_micros = u.debited_micros + EXCLUDED.debited_micros,
           debits = u.debits + EXCLUDED.debits""",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def prepare(base_dsn: str) -> tuple[str, str]:
    """The bench database, migrated and loaded by the owner role: (owner DSN, runtime DSN);
    the server and pgbench run as the runtime role, as in production."""
    conn = await asyncpg.connect(base_dsn)
    await conn.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    await conn.close()
    owner, runtime = await db.provision(base_dsn, DATABASE)
    conn = await asyncpg.connect(owner)
    await migrate.migrate(conn)
    for statement in _LOAD:
        args: list[Any] = [BALANCE_MICROS]
        if "generate_series" in statement:
            args += [ACCOUNTS, HOT_ACCOUNT]
        if "$1" not in statement:
            args = []
        await conn.execute(statement, *args)
    await conn.execute(
        "INSERT INTO credits (user_id, created_at, updated_at) VALUES ($1, $2, $2)",
        USAGE_ACCOUNT,
        dt.datetime.now(dt.UTC) - dt.timedelta(days=61),
    )
    await conn.execute("VACUUM ANALYZE")
    await conn.close()
    return owner, runtime


def db_dsn(base_dsn: str, database: str) -> str:
    head, _, query = base_dsn.partition("?")
    return f"{head.rsplit('/', 1)[0]}/{database}?{query}"


@contextlib.contextmanager
def server_process(dsn: str, tokens: dict[str, str], workers: int) -> Iterator[tuple[str, int]]:
    port = free_port()
    env = dict(os.environ, DATABASE_URL=dsn, GRPC_ADDRESS=f"127.0.0.1:{port}", LOG_FORMAT="text")
    env["GRPC_WORKERS"] = str(workers)
    env.update({f"{k.upper()}_TOKEN": v for k, v in tokens.items()})
    proc = subprocess.Popen(
        [sys.executable, "-m", "creditwallet.server"], env=env, stderr=subprocess.DEVNULL
    )
    try:
        yield f"127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        proc.wait(60)


async def wait_ready(target: str, token: str, workers: int) -> None:
    """Until every worker answers: fresh connections land on every listener in turn."""
    answered = 0
    for _ in range(400):
        client = AsyncCreditWalletClient(target, token, retries=0, own_connection=True)
        try:
            await client.get_balance(HOT_ACCOUNT)
            answered += 1
            if answered >= 4 * workers:
                return
        except Exception:
            await asyncio.sleep(0.05)
        finally:
            await client.close()
    raise RuntimeError("server did not come up")


class Bench:
    """One run: its arguments, the load generator, and every figure measured so far."""

    def __init__(
        self, args: argparse.Namespace, gen: LoadGenerator, tokens: dict[str, str], postmaster: int
    ) -> None:
        self.args = args
        self.gen = gen
        self.tokens = tokens
        self.postmaster = postmaster
        self.run_id = secrets.token_hex(3)
        self.figures: dict[str, Figures] = {}
        self.cpu: dict[str, dict[str, float]] = {}
        self.server_pid: int | None = None

    def measure(self, key: str, one: Callable[[int], Figures]) -> Figures:
        groups = {"postgres": [self.postmaster], "pgbench": [cpu.CHILDREN]}
        if key.startswith(("w1/", "w2/")):
            groups = {
                "server": [self.server_pid or 0],
                "postgres": [self.postmaster],
                "load generator": self.gen.pids,
            }
        elif key.startswith("in-process"):
            groups = {"bench (in-process handler)": [os.getpid()], "postgres": [self.postmaster]}
        meter = cpu.Meter(groups)
        meter.start()
        runs = [one(r) for r in range(self.args.repeats)]
        self.cpu[key] = meter.stop()
        self.figures[key] = median_of(runs)
        f = self.figures[key]
        shares = ", ".join(f"{k} {v:.2f}" for k, v in self.cpu[key].items())
        print(
            f"  {key:<30} {f.per_second:>7.0f}/s  p50 {f.p50_ms:7.2f}  p99 {f.p99_ms:7.2f} ms"
            f"  | cores: {shares}",
            flush=True,
        )
        return f

    def grpc(self, target: str, key: str, call: Call, callers: int, using: int = 0) -> Figures:
        token = self.tokens["agent"]

        def one(r: int) -> Figures:
            tagged = Call(call.kind, call.spread, call.batch, f"{self.run_id}-{key}-{r}")
            return self.gen.run(target, token, tagged, callers, self.args.seconds, using=using)

        return self.measure(key, one)


def grpc_rows(bench: Bench, dsn: str, workers: int, full_set: bool) -> dict[str, float]:
    """(a), Debit and BatchDebit against a server of ``workers`` processes."""
    breakdown: dict[str, float] = {}
    processes = bench.args.processes
    callers_set = CALLERS if full_set else (64,)
    with server_process(dsn, bench.tokens, workers) as (target, pid):
        bench.server_pid = pid
        asyncio.run(wait_ready(target, bench.tokens["agent"], workers))
        w = f"w{workers}"
        for callers in callers_set:
            bench.grpc(target, f"{w}/a health/{callers}", Call("health"), callers, processes)
        if full_set:  # the load generator check: one more process, same callers
            bench.grpc(target, f"{w}/a health/64/+1 process", Call("health"), 64, processes + 1)
        for spread in (True, False):
            load = "spread" if spread else "hot"
            for callers in callers_set:
                key = f"{w}/debit {load}/{callers}"
                profiled = bench.args.profile and full_set and spread and callers == 64
                with profile.sampling(pid, bench.args.seconds, enabled=profiled) as report:
                    bench.grpc(target, key, Call("debit", spread), callers, processes)
                if profiled:
                    breakdown = report.breakdown()
        for callers in BATCH_CALLERS if full_set else (16,):
            bench.grpc(
                target,
                f"{w}/batch {BATCH_SIZE}/{callers}",
                Call("batch", True, BATCH_SIZE),
                callers,
                processes,
            )
    return breakdown


def postgres_rows(bench: Bench, dsn: str) -> dict[str, str]:
    """(b) the captured debit, spread and hot; (c) the set-wise batch of 64."""
    spread = asyncio.run(
        capture.capture_debit(
            dsn, "bench-99991", "capture-spread", DEBIT_MICROS, warm_user="bench-99990"
        )
    )
    hot = asyncio.run(
        capture.capture_debit(dsn, HOT_ACCOUNT, "capture-hot", DEBIT_MICROS, warm_user=HOT_ACCOUNT)
    )
    scripts = {
        "spread": capture.pgbench_script(spread, "'bench-' || :cw_acct"),
        "hot": capture.pgbench_script(hot, f"'{HOT_ACCOUNT}'"),
    }
    seconds = bench.args.seconds

    def runs(script: str, clients: int, threads: int = pgbench.THREADS) -> Callable[[int], Figures]:
        return lambda r: pgbench.run(dsn, script, clients, seconds, threads=threads)

    for load, script in scripts.items():
        for callers in CALLERS:
            bench.measure(f"b pgbench {load}/{callers}", runs(script, callers))
    bench.measure("b pgbench spread/64/+1 thread", runs(scripts["spread"], 64, pgbench.THREADS + 1))
    for clients in BATCHED_CLIENTS:
        bench.measure(f"c pgbench batched/{clients}", runs(pgbench.BATCHED, clients))
    return scripts


@contextlib.asynccontextmanager
async def in_process_handler(dsn: str) -> AsyncIterator[WalletService]:
    pool = await db.create_pool(dsn, min_size=20, max_size=20)
    try:
        clock = SystemClock()
        yield WalletService(Runtime(pool, clock, DebitBatcher(pool, clock)))
    finally:
        await pool.close()


def in_process_row(bench: Bench, dsn: str) -> None:
    """The Debit servicer called directly (group commit, no gRPC), 64 callers, spread."""

    async def one(r: int) -> Figures:
        async with in_process_handler(dsn) as handler:

            async def call(n: int) -> object:
                request = wpb.DebitRequest(
                    user_id=user_for(True, n),
                    request_id=f"{bench.run_id}-inproc-{r}-{n}",
                    amount_micros=DEBIT_MICROS,
                )
                return await handler.Debit(request, None)  # type: ignore[arg-type]

            return await closed_loop(64, bench.args.seconds, call)

    bench.measure("in-process handler/64", lambda r: asyncio.run(one(r)))


def history_probes(client: AsyncCreditWalletClient, tag: str) -> dict[str, Any]:
    """The calls whose latency must not grow with the history. GetUsage joins when it exists
    (its figure then appears beside the others, with no change here)."""

    async def debit(n: int) -> object:
        request = wpb.DebitRequest(
            user_id=user_for(True, n), request_id=f"{tag}-{n}", amount_micros=DEBIT_MICROS
        )
        return await client.wallet.Debit(request)

    async def balance(n: int) -> object:
        return await client.get_balance(user_for(True, n))

    today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start, end = today - dt.timedelta(days=29), today + dt.timedelta(days=1)

    async def get_usage(n: int) -> object:
        # What a console charts: 30 days of the usage account by day and agent (240 groups).
        return await client.get_usage(
            USAGE_ACCOUNT,
            start_time=start,
            end_time=end,
            group_by=["day", "agent"],
            page_size=1000,
        )

    async def get_usage_sessions(n: int) -> object:
        # Its first page of 100 sessions over the same 30 days.
        return await client.get_usage(
            USAGE_ACCOUNT, start_time=start, end_time=end, group_by=["session"], page_size=100
        )

    return {
        "debit": debit,
        "get_balance": balance,
        "get_usage": get_usage,
        "get_usage_sessions": get_usage_sessions,
    }


async def sequenced(dsn: str, timeout_seconds: float = 300.0) -> None:
    """Until the server's event sequencer has placed every event (a backlog left by the
    pgbench rows, which write events with no server running, would disturb latencies)."""
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            exists = await conn.fetchval("SELECT to_regclass('events') IS NOT NULL")
            if not exists or not await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM events WHERE position IS NULL)"
            ):
                return
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


async def history_rows(
    args: argparse.Namespace, target: str, token: str, dsn: str
) -> dict[str, Any]:
    client = AsyncCreditWalletClient(target, token, retries=0)

    async def measure(label: str) -> dict[str, Any]:
        probes = history_probes(client, f"{label}-{secrets.token_hex(3)}")
        result = {}
        for name, probe in probes.items():
            runs = [await closed_loop(1, args.seconds, probe) for _ in range(args.repeats)]
            result[name] = median_of(runs).__dict__
        return result

    async def load(
        conn: asyncpg.Connection[asyncpg.Record], rows: int, prefix: str, session_debits: int
    ) -> None:
        async with conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")
            await conn.execute(
                _HISTORY,
                rows,
                ACCOUNTS,
                USAGE_SHARE,
                USAGE_ACCOUNT,
                prefix,
                session_debits,
                timeout=3600,
            )
            for statement in _HISTORY_ROLLUPS:
                await conn.execute(statement, prefix, timeout=3600)

    await sequenced(dsn)  # pgbench's events: the server's sequencer catches up first
    conn = await asyncpg.connect(dsn)
    await load(conn, HISTORY_SEED_ROWS, "seed-", HISTORY_SEED_SESSION_DEBITS)
    await conn.execute("VACUUM ANALYZE")
    empty = await measure("empty")
    started = time.perf_counter()
    await load(conn, args.history_rows, "history-", HISTORY_SESSION_DEBITS)
    await conn.execute("VACUUM ANALYZE", timeout=3600)
    # The load dirtied gigabytes of pages: flush them now, so that the latencies after it
    # measure a ledger with a long history, not a disk busy writing the load back.
    await conn.execute("CHECKPOINT", timeout=3600)
    load_seconds = time.perf_counter() - started
    total = await conn.fetchval("SELECT count(*) FROM credit_transactions")
    await conn.close()
    full = await measure("full")
    await client.close()
    result: dict[str, Any] = {
        "empty": empty,
        "full": full,
        "history_rows": total,
        "history_load_seconds": load_seconds,
    }
    for what in empty:
        result[f"{what}_p50_growth"] = full[what]["p50_ms"] / empty[what]["p50_ms"]
    print(
        f"history {total:,} rows (loaded in {load_seconds:.0f}s), p50 empty -> full: "
        + ", ".join(
            f"{what} {empty[what]['p50_ms']:.2f} -> {full[what]['p50_ms']:.2f} ms "
            f"({result[f'{what}_p50_growth']:.2f}x)"
            for what in empty
        ),
        flush=True,
    )
    return result


async def rollover_row(base_dsn: str, accounts: int) -> dict[str, Any]:
    conn = await asyncpg.connect(base_dsn)
    await conn.execute("DROP DATABASE IF EXISTS cw_rollover_bench WITH (FORCE)")
    await conn.execute("CREATE DATABASE cw_rollover_bench")
    await conn.close()
    seconds = await bench_rollover(db_dsn(base_dsn, "cw_rollover_bench"), accounts)
    return {"subscribers": accounts, "seconds": seconds}


def ratios(f: dict[str, Figures]) -> dict[str, Any]:
    """Every Debit row against (a) and (b), BatchDebit against (c); and the targets."""
    out: dict[str, Any] = {"debit": [], "batch": []}
    for workers in (1, 2):
        w = f"w{workers}"
        for load in ("spread", "hot"):
            for callers in CALLERS:
                row = f.get(f"{w}/debit {load}/{callers}")
                if row is None:
                    continue
                a = f[f"{w}/a health/{callers}"]
                b = f[f"b pgbench {load}/{callers}"]
                out["debit"].append(
                    {
                        "workers": workers,
                        "load": load,
                        "callers": callers,
                        "per_second": row.per_second,
                        "p99_ms": row.p99_ms,
                        "vs_grpc": row.per_second / a.per_second,
                        "vs_postgres": row.per_second / b.per_second,
                        "p99_vs_grpc_plus_postgres": row.p99_ms / (a.p99_ms + b.p99_ms),
                    }
                )
    batched = max(f[f"c pgbench batched/{c}"].per_second for c in BATCHED_CLIENTS)
    batched_debits = batched * pgbench.BATCH
    for workers in (1, 2):
        for callers in BATCH_CALLERS:
            row = f.get(f"w{workers}/batch {BATCH_SIZE}/{callers}")
            if row is not None:
                debits = row.per_second * BATCH_SIZE
                out["batch"].append(
                    {
                        "workers": workers,
                        "callers": callers,
                        "debits_per_second": debits,
                        "vs_batched_postgres": debits / batched_debits,
                    }
                )
    out["batched_postgres_debits_per_second"] = batched_debits
    return out


def targets(r: dict[str, Any], history: dict[str, Any], rollover: dict[str, Any]) -> list[Any]:
    def debit(load: str, callers: int, workers: int = 1) -> dict[str, Any]:
        return next(
            d
            for d in r["debit"]
            if (d["load"], d["callers"], d["workers"]) == (load, callers, workers)
        )

    best_batch = max(b["vs_batched_postgres"] for b in r["batch"])
    rows: list[tuple[str, float, float, bool]] = [
        ("spread 64: Debit / (a)", debit("spread", 64)["vs_grpc"], 0.8, True),
        ("hot 64: Debit / (a)", debit("hot", 64)["vs_grpc"], 0.6, True),
        (f"BatchDebit of {BATCH_SIZE}: debits/s / (c)", best_batch, 0.5, True),
        (
            "spread 16: p99 / (p99 (a) + p99 (b))",
            debit("spread", 16)["p99_vs_grpc_plus_postgres"],
            2.0,
            False,
        ),
    ]
    for what in ("debit", "get_balance", "get_usage"):
        growth = history.get(f"{what}_p50_growth")
        if growth is not None:
            rows.append(
                (f"{what} p50 at {history['history_rows']:,} rows / empty", growth, 1.2, False)
            )
    rows.append((f"rollover of {rollover['subscribers']:,} (s)", rollover["seconds"], 60.0, False))
    result = []
    for name, value, bound, at_least in rows:
        met = value >= bound if at_least else value <= bound
        result.append(
            {"target": name, "value": value, "bound": bound, "at_least": at_least, "met": met}
        )
    return result


def cpu_per_debit(bench: Bench) -> dict[str, dict[str, float]]:
    """CPU microseconds per debit of each part (the basis of the scaling projection)."""
    out: dict[str, dict[str, float]] = {}
    for key, per_call in (
        ("w1/debit spread/64", 1),
        ("w1/debit hot/64", 1),
        (f"w1/batch {BATCH_SIZE}/16", BATCH_SIZE),
        ("b pgbench spread/16", 1),
        ("c pgbench batched/2", pgbench.BATCH),
    ):
        figure, shares = bench.figures.get(key), bench.cpu.get(key)
        if figure and shares:
            rate = figure.per_second * per_call
            out[key] = {part: round(cores / rate * 1e6, 1) for part, cores in shares.items()}
    return out


def report(r: dict[str, Any], figures: dict[str, Figures], goals: list[Any]) -> None:
    print("\nDebit against the ceilings: (a) gRPC alone, (b) PostgreSQL alone")
    print("workers  load   n |   rate/s |  / (a) |  / (b) | p99 / (p99 a + p99 b)")
    for d in r["debit"]:
        print(
            f"{d['workers']:>7} {d['load']:>6} {d['callers']:>2} | {d['per_second']:>8.0f} | "
            f"{d['vs_grpc']:>6.2f} | {d['vs_postgres']:>6.2f} | "
            f"{d['p99_vs_grpc_plus_postgres']:.2f}"
        )
    print(
        f"\nBatchDebit of {BATCH_SIZE} against (c) PostgreSQL batched "
        f"({r['batched_postgres_debits_per_second']:.0f} debits/s)"
    )
    for b in r["batch"]:
        print(
            f"  workers {b['workers']}, {b['callers']:>2} callers: "
            f"{b['debits_per_second']:>8.0f} debits/s = {b['vs_batched_postgres']:.2f} x (c)"
        )
    a, a1 = figures.get("w1/a health/64"), figures.get("w1/a health/64/+1 process")
    b, b1 = figures.get("b pgbench spread/64"), figures.get("b pgbench spread/64/+1 thread")
    if a and a1 and b and b1:
        print(
            f"\nload generator check: (a) at 64 callers {a.per_second:.0f}/s with the bench's "
            f"processes, {a1.per_second:.0f}/s with one more "
            f"({a1.per_second / a.per_second:.2f}x); "
            f"(b) {b.per_second:.0f}/s, {b1.per_second:.0f}/s with one more pgbench thread "
            f"({b1.per_second / b.per_second:.2f}x)"
        )
    print("\nCPU microseconds per debit (cores used / debits per second):")
    for key, parts in r["cpu_per_debit_us"].items():
        print(f"  {key:<24} " + ", ".join(f"{part} {us:.0f}" for part, us in parts.items()))
    print("\ntargets:")
    for g in goals:
        sign = ">=" if g["at_least"] else "<="
        verdict = "met" if g["met"] else f"MISSED ({g['value'] / g['bound']:.2f} of the bound)"
        print(f"  {g['target']:<45} {g['value']:>8.2f} (target {sign} {g['bound']}): {verdict}")


def machine_load() -> dict[str, float]:
    """How busy the machine is besides the bench: load average, and the share of the last
    minute in which some task waited for CPU or for I/O (Linux pressure stall information)."""
    load: dict[str, float] = {"load_average_1m": round(os.getloadavg()[0], 2)}
    for resource in ("cpu", "io"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            first = Path(f"/proc/pressure/{resource}").read_text().splitlines()[0]
            load[f"{resource}_pressure_60s_pct"] = float(first.split()[2].split("=")[1])
    return load


def main(args: argparse.Namespace) -> int:
    data = Path(".data/bench")
    if args.fresh:
        shutil.rmtree(data, ignore_errors=True)
    load_before = machine_load()
    base_dsn = db.start_embedded(data)
    _, dsn = asyncio.run(prepare(base_dsn))
    tokens = {s: secrets.token_urlsafe(32) for s in ("agent", "billing", "admin")}
    print(
        f"make bench: {ACCOUNTS:,} accounts, {args.seconds}s per run, median of {args.repeats}, "
        f"{args.processes} load generator processes; machine before: {load_before}",
        flush=True,
    )
    started = time.perf_counter()
    if args.only:
        return only(args, base_dsn, dsn, tokens, started)
    postmaster = int((data / "pg" / "postmaster.pid").read_text().split()[0])
    with LoadGenerator(args.processes + 1) as gen:
        bench = Bench(args, gen, tokens, postmaster)
        print("server with GRPC_WORKERS=1:")
        breakdown = grpc_rows(bench, dsn, 1, full_set=True)
        print("server with GRPC_WORKERS=2:")
        grpc_rows(bench, dsn, 2, full_set=False)
    print("PostgreSQL alone (pgbench):")
    scripts = postgres_rows(bench, dsn)
    in_process_row(bench, dsn)
    if breakdown:
        print("server profile (Debit, spread, 64 callers), % of the event-loop thread:")
        print("  " + ", ".join(f"{k} {v}%" for k, v in breakdown.items()))
    partial = {"partial": "the history and rollover rows did not finish", "cpu_cores": bench.cpu}
    partial["figures"] = {k: v.__dict__ for k, v in bench.figures.items()}
    Path(args.output).write_text(json.dumps(partial, indent=2) + "\n")
    with server_process(dsn, tokens, 1) as (target, _):
        asyncio.run(wait_ready(target, tokens["agent"], 1))
        superuser = db_dsn(base_dsn, DATABASE)
        history = asyncio.run(history_rows(args, target, tokens["admin"], superuser))
    rollover = asyncio.run(rollover_row(base_dsn, args.rollover_accounts))
    figures = bench.figures
    r = ratios(figures)
    r["cpu_per_debit_us"] = cpu_per_debit(bench)
    goals = targets(r, history, rollover)
    report(r, figures, goals)
    load_after = machine_load()
    print(f"machine after: {load_after}")
    result = {
        "when": dt.datetime.now(dt.UTC).isoformat(),
        "command": "make bench BENCH_ARGS='" + " ".join(sys.argv[1:]) + "'",
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "load_before": load_before,
            "load_after": load_after,
        },
        "repeats": args.repeats,
        "seconds_per_run": args.seconds,
        "load_generator_processes": args.processes,
        "figures": {k: v.__dict__ for k, v in figures.items()},
        "cpu_cores": bench.cpu,
        "ratios": r,
        "targets": goals,
        "profile": breakdown,
        "history": history,
        "rollover": rollover,
        "pgbench_scripts": scripts,
        "wall_seconds": time.perf_counter() - started,
    }
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(f"figures written to {args.output} ({result['wall_seconds']:.0f} s)")
    return 0


def only(
    args: argparse.Namespace, base_dsn: str, dsn: str, tokens: dict[str, str], started: float
) -> int:
    """One part of the run on its own (``--only``), e.g. to measure it again on a quiet machine."""
    result: dict[str, Any] = {"only": args.only, "load_before": machine_load()}
    if args.only == "history":
        with server_process(dsn, tokens, 1) as (target, _):
            asyncio.run(wait_ready(target, tokens["agent"], 1))
            superuser = db_dsn(base_dsn, DATABASE)
            result["history"] = asyncio.run(history_rows(args, target, tokens["admin"], superuser))
    else:
        result["rollover"] = asyncio.run(rollover_row(base_dsn, args.rollover_accounts))
    result["load_after"] = machine_load()
    result["wall_seconds"] = time.perf_counter() - started
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(f"machine: {result['load_before']} -> {result['load_after']}; written to {args.output}")
    return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="make bench", description=__doc__)
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--processes", type=int, default=4, help="load generator processes")
    parser.add_argument("--history-rows", type=int, default=1_000_000)
    parser.add_argument("--rollover-accounts", type=int, default=100_000)
    parser.add_argument(
        "--full",
        action="store_true",
        help="the targets' sizes: 10,000,000 history rows, 1,000,000 subscribers, 3 s runs",
    )
    parser.add_argument("--output", default="server/bench/results.json")
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--fresh", action="store_true", help="recreate the bench cluster")
    parser.add_argument(
        "--only", choices=("history", "rollover"), help="run only this part (write --output)"
    )
    args = parser.parse_args(argv)
    if args.full:
        args.history_rows = max(args.history_rows, 10_000_000)
        args.rollover_accounts = max(args.rollover_accounts, 1_000_000)
        args.seconds = max(args.seconds, 3.0)
    return args


if __name__ == "__main__":
    sys.exit(main(parse()))
