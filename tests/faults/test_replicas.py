"""Two server processes on one database (replicas, docs/scaling.md).

They start together on a database the owner role migrated (servers never migrate; concurrent
migration runs are tests/ledger/test_migrations.py's), then every debit's request_id is sent to both
at the same moment, on accounts
that cannot pay for all of them. Each request_id is applied at most once and both replicas
give the same answer for it; each account is drained exactly to zero, never below.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest_asyncio
from creditwallet.client import errors as cw
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.server import migrate

from tests import harness
from tests.faults import load
from tests.faults.conftest import Scale
from tests.faults.serverproc import ServerProcess

TRIAL_MICROS = 5 * load.CREDIT
DEBIT_MICROS = load.CREDIT // 2
FITS = TRIAL_MICROS // DEBIT_MICROS  # debits each account can pay for
DEMAND = 3  # request_ids per account = DEMAND * FITS
CONCURRENCY = 16
_names = itertools.count(1)


@pytest_asyncio.fixture(loop_scope="session")
async def replicas(base_dsn: str, logs_dir: Path) -> AsyncIterator[list[ServerProcess]]:
    """Two servers started at the same moment on one database, migrated by the owner role
    (migrations applied once by concurrent runs: tests/ledger/test_migrations.py)."""
    name = f"cw_replicas_{next(_names)}"
    _, dsn = await harness.migrated_database(base_dsn, name)
    procs = [ServerProcess(dsn, logs_dir / f"replica-{i}.log") for i in range(2)]
    for proc in procs:
        proc.start()
    try:
        await asyncio.gather(*(proc.wait_serving() for proc in procs))
        yield procs
    finally:
        for proc in procs:
            proc.stop()


async def answer(client: AsyncCreditWalletClient, user: str, request_id: str) -> tuple[str, bool]:
    """(transaction_id or refusal reason, replayed) of one debit."""
    try:
        reply = await client.debit(user, amount_micros=DEBIT_MICROS, request_id=request_id)
    except cw.CreditWalletError as exc:
        return exc.reason, False
    return reply.transaction_id, reply.replayed


async def test_migrations_once_and_no_double_debit_across_replicas(
    replicas: list[ServerProcess], scale: Scale, record: list[str]
) -> None:
    await race_both_replicas(replicas, replicas[0].dsn, scale, record, "2 replicas")


async def race_both_replicas(
    replicas: list[ServerProcess], dsn: str, scale: Scale, record: list[str], label: str
) -> None:
    """Each request_id to both replicas at once; the audit reads the ledger at ``dsn``."""
    versions = [v for v, _, _ in migrate.load_migrations()]
    applied_lines = sum(p.log_text().count('"migration applied"') for p in replicas)
    assert applied_lines == 0, "a server never migrates (it runs as the runtime role)"

    admin = load.client(replicas[0].target)
    agents = [load.client(p.target, "agent") for p in replicas]
    users = [harness.new_user() for _ in range(scale.users)]
    gate = asyncio.Semaphore(CONCURRENCY)
    try:
        for user in users:
            await admin.ensure_account(user)

        async def both(user: str, request_id: str) -> list[tuple[str, bool]]:
            async with gate:
                return list(await asyncio.gather(*(answer(a, user, request_id) for a in agents)))

        jobs = [(u, f"replica-{u}-{i}") for i in range(DEMAND * FITS) for u in users]
        answers = await asyncio.gather(*(both(u, rid) for u, rid in jobs))
        report = await admin.verify_ledger()
    finally:
        for client in (admin, *agents):
            await client.close()

    disagreements = [
        (job, pair) for job, pair in zip(jobs, answers, strict=True) if pair[0][0] != pair[1][0]
    ]
    assert not disagreements, disagreements[:5]
    fresh_both = [
        job
        for job, pair in zip(jobs, answers, strict=True)
        if pair[0][0].isdigit() and not pair[0][1] and not pair[1][1]
    ]
    assert not fresh_both, ("applied by both replicas", fresh_both[:5])
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT user_id, count(*) AS n, count(DISTINCT request_id) AS ids "
            "FROM credit_transactions WHERE type = 'debit' GROUP BY user_id"
        )
        balances = await conn.fetch("SELECT user_id, balance_micros FROM credits")
        migrations = await conn.fetchval("SELECT count(*) FROM schema_migrations")
    finally:
        await conn.close()
    assert migrations == len(versions)
    assert {r["user_id"]: (r["n"], r["ids"]) for r in rows} == {u: (FITS, FITS) for u in users}
    assert all(b["balance_micros"] == 0 for b in balances), "drained exactly, never below"
    assert report.ok, [v.detail for v in report.violations][:5]
    accepted = sum(1 for pair in answers if pair[0][0].isdigit())
    record.append(
        f"{label}: attempted={len(jobs)} request_ids x2 sends, acknowledged={accepted}, "
        f"found_in_ledger={sum(r['n'] for r in rows)}, applied_twice=0, "
        f"refused_insufficient={len(jobs) - accepted}, invariant_violations="
        f"{len(report.violations)}, migrations={migrations}"
    )
    for proc in replicas:
        load.assert_no_secrets(proc.log_text(), "a replica's log")
