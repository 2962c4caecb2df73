"""cw_judge_available (migration 0017) against the deferred trigger, over a grid of cases, and
the setting that switches between them: never outliving its transaction, a writer racing a
chunk, two rollover workers.

The grid works on bare account rows (no lots, no history: only the alerts' inputs matter), so
this module does not verify the ledger afterwards; each pair of twins is written alike in one
transaction (up, then down), one twin judged by the trigger, the other by the set function
under creditwallet.available_judged, and must get the same events (sequence, type, time,
body) and attempts.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest_asyncio
from creditwallet.server import db
from creditwallet.server.ledger import rollover, rollover_chunks
from creditwallet.v1 import common_pb2 as pb

from tests import events_kit, harness
from tests.harness import Ledger

C = 1_000_000
ALERTS = ("balance.low", "balance.depleted", "auto_recharge.requested")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def ledger(base_dsn: str, data_dir: Path) -> AsyncIterator[Ledger]:
    running = await events_kit.start(
        base_dsn, data_dir, balance_low_default_micros=C, workers=False
    )
    yield running
    await running.close()


async def _account(conn: Any, user: str, balance: int, held: int) -> None:
    await conn.execute(
        "INSERT INTO credits (user_id, balance_micros, held_micros, debt_micros, created_at, "
        "updated_at) VALUES ($1, $2, $3, 5000000, now(), now())",
        user,
        balance,
        held,
    )


RULES = ("none", "fires", "disabled", "backoff", "backoff_edge", "open", "spent", "failed_only")


async def _rule(conn: Any, user: str, kind: str, at: dt.datetime) -> None:
    if kind == "none":
        return
    retry = {"backoff": at + dt.timedelta(seconds=1), "backoff_edge": at}.get(kind)
    await conn.execute(
        "INSERT INTO auto_recharge_rules (user_id, enabled, threshold_micros, price_id, "
        "credits_micros, amount_minor, currency, customer_id, payment_method_id, "
        "monthly_limit_minor, retry_after, updated_at) VALUES ($1, $2, $3, 'p', $4, 1000, "
        "'usd', 'cus', 'pm', 2000, $5, $6)",
        user,
        kind != "disabled",
        3 * C,
        10 * C,
        retry,
        at,
    )
    month = at.astimezone(dt.UTC).strftime("%Y-%m")
    statuses = {
        "open": [("submitted", "2099-01")],
        "spent": [("succeeded", month)] * 2,
        "failed_only": [("failed", month)] * 3,
    }.get(kind, [])
    for status, m in statuses:
        await conn.execute(
            "INSERT INTO auto_recharge_attempts (user_id, status, month, price_id, credits_micros,"
            " amount_minor, currency, customer_id, payment_method_id, next_try_at, created_at,"
            " updated_at) VALUES ($1, $2, $3, 'p', 1, 1000, 'usd', 'c', 'pm', $4, $4, $4)",
            user,
            status,
            m,
            at,
        )


async def _decided(conn: Any, user: str) -> dict[str, Any]:
    ev = await conn.fetch(
        "SELECT seq, type, occurred_at, body::text AS body FROM events WHERE user_id = $1 "
        "ORDER BY seq",
        user,
    )
    att = await conn.fetch(
        "SELECT status, month, credits_micros, amount_minor, next_try_at, created_at "
        "FROM auto_recharge_attempts WHERE user_id = $1 AND created_at > '2000-01-01' "
        "AND customer_id = 'cus' ORDER BY created_at",
        user,
    )
    return {
        "events": [
            (
                r["seq"],
                r["type"],
                r["occurred_at"],
                {k: v for k, v in json.loads(r["body"]).items() if k != "attempt_id"},
            )
            for r in ev
            if r["type"] in ALERTS
        ],
        "attempts": [tuple(r) for r in att],
    }


# The moment of the write: 23:30 on the last day of a month at UTC-5 is the next month in UTC.
AT = dt.datetime(2031, 1, 31, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5)))


async def _write(
    conn: asyncpg.Connection, user: str, steps: list[tuple[int, int]], judged: bool
) -> None:
    async with conn.transaction():
        if judged:
            await conn.execute(rollover_chunks._CHUNK_STARTS)
        row = await conn.fetchrow(
            "SELECT balance_micros - held_micros AS a FROM credits WHERE user_id = $1 FOR UPDATE",
            user,
        )
        for balance, held in steps:
            await conn.execute(
                "UPDATE credits SET balance_micros = $2, held_micros = $3, updated_at = $4 "
                "WHERE user_id = $1",
                user,
                balance,
                held,
                AT,
            )
        assert row is not None
        if judged:
            await conn.execute(rollover_chunks._JUDGE_AVAILABLE, [user], [row["a"]])


async def test_set_function_decides_as_the_trigger_on_a_grid(ledger: Ledger) -> None:
    values = [-1 * C, 0, 1, C - 1, C, C + 1, 2 * C, 3 * C - 1, 3 * C, 5 * C]
    alerts = [None, 0, 2 * C, 3 * C]
    cases = [
        (b, a, al, rule, held)
        for b, a in itertools.product(values, values)
        if a < b
        for al in alerts
        for rule in RULES
        for held in (0, C)
    ]
    run = harness.new_user()
    conn = await asyncpg.connect(ledger.dsn)
    mismatches = []
    kinds: dict[str, int] = {}
    try:
        for n, (before, after, alert, rule, held) in enumerate(cases):
            twins = [f"diff-{run}-{n}-t", f"diff-{run}-{n}-c"]
            for user in twins:
                await _account(conn, user, before + held, held)
                if alert is not None:
                    await conn.execute(
                        "INSERT INTO balance_alerts VALUES ($1, $2, now())", user, alert
                    )
                await _rule(conn, user, rule, AT)
            # Up, then down: the trigger decides on the first update's OLD.
            steps = [(before + held + 7 * C, held), (after + held, held)]
            await _write(conn, twins[0], steps, judged=False)
            await _write(conn, twins[1], steps, judged=True)
            t, c = await _decided(conn, twins[0]), await _decided(conn, twins[1])
            for e in c["events"]:
                kinds[e[1]] = kinds.get(e[1], 0) + 1
            kinds["attempt"] = kinds.get("attempt", 0) + len(c["attempts"])
            if t != c:
                mismatches.append(((before, after, alert, rule, held), t, c))
    finally:
        await conn.close()
    assert set(kinds) == {*ALERTS, "attempt"}
    assert kinds["attempt"] > 0
    assert not mismatches, mismatches[:5]


async def test_setting_never_outlives_the_chunk(ledger: Ledger) -> None:
    """One pooled connection: a chunk that commits, one that fails after its judgement, then
    an ordinary write on the same connection must still queue the trigger."""
    pool = await db.create_pool(ledger.dsn, min_size=1, max_size=1)
    try:
        user = f"leak-{harness.new_user()}"
        async with pool.acquire() as conn:
            await _account(conn, user, 5 * C, 0)
        for fail in (False, True):

            async def chunk(conn: db.Connection, fail: bool = fail) -> None:
                await conn.execute(rollover_chunks._CHUNK_STARTS)
                await conn.fetch(rollover_chunks._LOCK_ALL, [user])
                await conn.execute(rollover_chunks._JUDGE_AVAILABLE, [user], [5 * C])
                if fail:
                    raise RuntimeError("boom")

            with contextlib.suppress(RuntimeError):
                await db.run_transaction(pool, chunk)
            async with pool.acquire() as conn:
                assert await conn.fetchval(
                    "SELECT current_setting('creditwallet.available_judged', true)"
                ) in (None, "")
        # A plain write on that connection: 5 -> 0.5 crosses the default 1 credit.
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE credits SET balance_micros = $2, updated_at = now() WHERE user_id = $1",
                user,
                C // 2,
            )
        async with pool.acquire() as conn:
            got = [e[1] for e in (await _decided(conn, user))["events"]]
        assert got == ["balance.low"], got
    finally:
        await pool.close()


async def _alerts(ledger: Ledger, user: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        (e["type"], e["body"])
        for e in await events_kit.events_of(ledger.dsn, user)
        if e["type"] in ALERTS
    ]


async def _promo_account(ledger: Ledger, user: str, alert: int | None) -> None:
    admin = ledger.client("admin")
    soon = ledger.clock.now() + dt.timedelta(hours=1)
    await admin.grant(user, 3 * C, pb.LOT_SOURCE_PROMO, create_account=True, expires_at=soon)
    await admin.grant(user, 2 * C, pb.LOT_SOURCE_TOP_UP)
    if alert is not None:
        async with ledger.pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO balance_alerts VALUES ($1, $2, now()) ON CONFLICT (user_id) "
                "DO UPDATE SET threshold_micros = EXCLUDED.threshold_micros",
                user,
                alert,
            )


async def test_a_debit_waiting_on_a_chunk_is_judged_from_what_the_chunk_committed(
    ledger: Ledger,
) -> None:
    user = f"race-{harness.new_user()}"
    await _promo_account(ledger, user, 4 * C)
    ledger.clock.advance(hours=2)
    agent = ledger.client("agent")
    conn = await asyncpg.connect(ledger.dsn)
    try:
        await conn.execute("SET TIME ZONE 'UTC'")
        tx = conn.transaction()
        await tx.start()
        done = await rollover_chunks.expire(
            conn, ids=[user], due=ledger.clock.now(), clock=ledger.clock
        )
        assert done.accounts_processed == 1
        debit = asyncio.ensure_future(agent.debit(user, amount_micros=2 * C))
        await harness.waiting_on_locks(conn, 1)  # the debit waits on the chunk's lock
        assert not debit.done()
        await tx.commit()
        await debit
    finally:
        await conn.close()
    got = await _alerts(ledger, user)
    assert got == [
        (
            "balance.low",
            {
                "threshold_micros": 4 * C,
                "available_before_micros": 5 * C,
                "available_micros": 2 * C,
            },
        ),
        ("balance.depleted", {"available_before_micros": 2 * C, "available_micros": 0}),
    ], got


async def test_two_workers_judge_every_account_once(ledger: Ledger) -> None:
    prefix = f"two-{harness.new_user()}"
    users = [f"{prefix}-{i:03d}" for i in range(30)]
    for user in users:
        await _promo_account(ledger, user, 4 * C)
    ledger.clock.advance(hours=2)
    await rollover.run(ledger.pool, prefix, ledger.clock, chunk_accounts=4, workers=2)
    for user in users:
        got = [t for t, _ in await _alerts(ledger, user)]
        assert got == ["balance.low"], (user, got)
