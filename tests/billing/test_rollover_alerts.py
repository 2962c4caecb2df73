"""A rollover chunk judges its accounts' balance alerts in one call: exactly what the deferred
trigger decides one account at a time (balance.low, balance.depleted, auto-recharge).

Twin accounts, each pair set up alike: promo credits that expire, with and without top-up
credits left, thresholds crossed or not, the ledger's default threshold, auto-recharge rules
that fire, that are in their backoff, that already have an attempt open or have spent their
month, and a hold released into a lot that expires (up, then down: no crossing). One twin of
each pair is rolled over with the chunk's own judgement turned off, so the trigger decides;
the other as the rollover runs. Their alert events and attempts must be the same.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.server import db
from creditwallet.server.db import Connection
from creditwallet.server.ledger import rollover, rollover_chunks
from creditwallet.server.ledger.types import Account
from creditwallet.v1 import common_pb2 as pb
from creditwallet.v1 import events_pb2 as epb

from tests import events_kit, harness
from tests.harness import Ledger
from tests.ledger.test_distribution import AUTO_EXPLAIN_NESTED, catalog, distributed

pytestmark = pytest.mark.usefixtures("verified")

CREDIT = 1_000_000
ALERT_EVENTS = ("balance.low", "balance.depleted", "auto_recharge.requested")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def ledger(base_dsn: str, data_dir: Path) -> AsyncIterator[Ledger]:
    running = await events_kit.start(
        base_dsn, data_dir, balance_low_default_micros=CREDIT, workers=False
    )
    yield running
    await running.close()


@dataclasses.dataclass(frozen=True)
class Case:
    promo: int  # credits, expiring
    top_up: int = 0  # credits, not expiring
    alert: int | None = None  # the account's threshold (credits); None: the default (1)
    rule: int | None = None  # an auto-recharge rule's threshold (credits)
    rule_enabled: bool = True
    backoff: bool = False  # the rule's retry_after is in the future
    open_attempt: bool = False
    month_spent: bool = False  # the month's attempts already reach the rule's limit
    hold: int = 0  # credits held from the promo, released by the rollover


CASES = (
    Case(promo=3, top_up=2, alert=4),  # 5 -> 2: crosses 4
    Case(promo=3),  # 3 -> 0: below the default, and depleted
    Case(promo=3, top_up=2, alert=1),  # 5 -> 2: stays above 1
    Case(promo=3, top_up=2, alert=0),  # no threshold
    Case(promo=3, top_up=2, alert=0, rule=3),  # an attempt
    Case(promo=3, top_up=2, alert=0, rule=3, backoff=True),
    Case(promo=3, top_up=2, alert=0, rule=3, open_attempt=True),
    Case(promo=3, top_up=2, alert=0, rule=3, month_spent=True),
    Case(promo=3, top_up=2, alert=0, rule=3, rule_enabled=False),
    Case(promo=3, top_up=2, alert=0, rule=1),  # 2 stays above the rule's 1
    Case(promo=3, top_up=0, alert=2, rule=3),  # low, depleted and an attempt
    Case(promo=4, top_up=1, alert=2, hold=4),  # the hold was the crossing; 1 -> 1 now
)


async def _set_up(ledger: Ledger, case: Case, user: str, expires: dt.datetime) -> None:
    admin = ledger.client("admin")
    await admin.grant(
        user, case.promo * CREDIT, pb.LOT_SOURCE_PROMO, create_account=True, expires_at=expires
    )
    if case.top_up:
        await admin.grant(user, case.top_up * CREDIT, pb.LOT_SOURCE_TOP_UP)
    if case.alert is not None:
        await admin.admin.SetBalanceAlert(
            epb.SetBalanceAlertRequest(user_id=user, threshold_micros=case.alert * CREDIT)
        )
    if case.hold:
        ttl = int((expires - ledger.clock.now()).total_seconds()) + 60
        await admin.authorize(user, amount_micros=case.hold * CREDIT, ttl_seconds=ttl)
    if case.rule is None:
        return
    now = ledger.clock.now()
    async with ledger.pool.acquire() as conn:
        # The rule as SetAutoRecharge stores it (which needs a payment customer to check).
        await conn.execute(
            "INSERT INTO auto_recharge_rules (user_id, enabled, threshold_micros, price_id, "
            "credits_micros, amount_minor, currency, customer_id, payment_method_id, "
            "monthly_limit_minor, retry_after, updated_at) "
            "VALUES ($1, $2, $3, 'price_recharge', $4, 1000, 'usd', 'cus_x', 'pm_x', 2000, $5, $6)",
            user,
            case.rule_enabled,
            case.rule * CREDIT,
            10 * CREDIT,
            now + dt.timedelta(days=30) if case.backoff else None,
            now,
        )
        statuses = (["pending"] if case.open_attempt else []) + (
            ["succeeded", "succeeded"] if case.month_spent else []
        )
        for status in statuses:
            await conn.execute(
                "INSERT INTO auto_recharge_attempts (user_id, status, month, price_id, "
                "credits_micros, amount_minor, currency, customer_id, payment_method_id, "
                "next_try_at, created_at, updated_at) VALUES ($1, $2, $3, 'price_recharge', "
                "$4, 1000, 'usd', 'cus_x', 'pm_x', $5, $5, $5)",
                user,
                status,
                "2099-01" if status == "pending" else _month(expires),
                10 * CREDIT,
                now,
            )


def _month(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m")


async def _decided(ledger: Ledger, user: str) -> dict[str, Any]:
    """What was decided for the account since it was set up: alert events (type and body)
    and the attempts the rollover recorded."""
    events = [
        (e["type"], {k: v for k, v in e["body"].items() if k != "attempt_id"})
        for e in await events_kit.events_of(ledger.dsn, user)
        if e["type"] in ALERT_EVENTS
    ]
    attempts = [
        (r["status"], r["credits_micros"], r["amount_minor"])
        for r in await ledger.pool.fetch(
            "SELECT status, credits_micros, amount_minor FROM auto_recharge_attempts "
            "WHERE user_id = $1 ORDER BY created_at, attempt_id",
            user,
        )
    ]
    return {"events": events, "attempts": attempts}


async def test_a_chunk_judges_alerts_as_the_trigger_does_one_account_at_a_time(
    ledger: Ledger, admin: AsyncCreditWalletClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = ledger.clock.now()
    by_trigger = [f"alerts-t-{harness.new_user()}" for _ in CASES]
    by_chunk = [f"alerts-c-{harness.new_user()}" for _ in CASES]
    for case, user in zip(CASES, by_trigger, strict=True):
        await _set_up(ledger, case, user, start + dt.timedelta(hours=1))
    for case, user in zip(CASES, by_chunk, strict=True):
        await _set_up(ledger, case, user, start + dt.timedelta(hours=3))
    before = {u: await _decided(ledger, u) for u in by_trigger + by_chunk}

    async def not_judged(conn: Connection, locked: list[Account]) -> None:
        return None

    # The first twins: the chunk's judgement off, so the deferred trigger decides each one.
    with monkeypatch.context() as patched:
        patched.setattr(rollover_chunks, "_CHUNK_STARTS", rollover_chunks._STATEMENT_EVENTS)
        patched.setattr(rollover_chunks, "_judge", not_judged)
        ledger.clock.set(start + dt.timedelta(hours=2))
        done = await rollover.run(ledger.pool, "alerts-t", ledger.clock, chunk_accounts=5)
    assert done.accounts_processed >= len(CASES)
    # The second twins, as the rollover runs: the chunk judges them all at once.
    ledger.clock.set(start + dt.timedelta(hours=4))
    done = await rollover.run(ledger.pool, "alerts-c", ledger.clock, chunk_accounts=5)
    assert done.accounts_processed >= len(CASES)

    def new(user: str, now: dict[str, Any]) -> dict[str, Any]:
        return {k: v[len(before[user][k]) :] for k, v in now.items()}

    decided_by_trigger = [new(u, await _decided(ledger, u)) for u in by_trigger]
    decided_by_chunk = [new(u, await _decided(ledger, u)) for u in by_chunk]
    for case, trigger, chunk in zip(CASES, decided_by_trigger, decided_by_chunk, strict=True):
        assert chunk == trigger, case
    # The cases reach every outcome: each kind of event, and an attempt recorded.
    kinds = {t for d in decided_by_chunk for t, _ in d["events"]}
    assert kinds == set(ALERT_EVENTS)
    assert sum(len(d["attempts"]) for d in decided_by_chunk) == 2


CHUNK = 2000  # limits.ROLLOVER_CHUNK_ACCOUNTS
PLAN_CALLS = 7  # PL/pgSQL plans with the arguments' values 5 times, then may keep a generic plan


async def test_a_chunks_judgement_reaches_each_table_by_key_however_it_is_planned(
    ledger: Ledger, base_dsn: str
) -> None:
    """A chunk's 2,000 accounts, every one with a threshold, a rule and an attempt: each call
    of the set function, with the plans PostgreSQL makes from the arrays' real sizes and the
    generic one after, reaches every per-user table by key, never by a whole-table scan."""
    users = [f"plan-{harness.new_user()}-{i:05d}" for i in range(CHUNK)]
    async with ledger.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO credits (user_id, balance_micros, created_at, updated_at) "
            "SELECT u, 5000000, now(), now() FROM unnest($1::text[]) u",
            users,
        )
        await conn.execute(
            "INSERT INTO balance_alerts SELECT u, 4000000, now() FROM unnest($1::text[]) u", users
        )
        await conn.execute(
            "INSERT INTO auto_recharge_rules (user_id, enabled, threshold_micros, price_id, "
            "credits_micros, amount_minor, currency, customer_id, payment_method_id, "
            "monthly_limit_minor, updated_at) SELECT u, true, 3000000, 'p', 1, 1000, 'usd', "
            "'c', 'pm', 100000, now() FROM unnest($1::text[]) u",
            users,
        )
        await conn.execute(
            "INSERT INTO auto_recharge_attempts (user_id, status, month, price_id, "
            "credits_micros, amount_minor, currency, customer_id, payment_method_id, "
            "next_try_at, created_at, updated_at) SELECT u, 'succeeded', '2020-01', 'p', 1, "
            "1000, 'usd', 'c', 'pm', now(), now(), now() FROM unnest($1::text[]) u",
            users,
        )
        await conn.execute("ANALYZE")
        database = await conn.fetchval("SELECT current_database()")
    tables, _, _ = await catalog(ledger.dsn)
    per_user = distributed(tables)
    explained = await asyncpg.connect(db.dsn_with(base_dsn, database=database))  # for LOAD
    notices: list[str] = []
    explained.add_log_listener(lambda _, message: notices.append(message.message))
    whole_table_scans: list[str] = []
    decided: list[int] = []
    try:
        for setting in AUTO_EXPLAIN_NESTED:
            await explained.execute(setting)
        for _ in range(PLAN_CALLS):
            chunk = explained.transaction()
            await chunk.start()
            try:
                await explained.execute(rollover_chunks._CHUNK_STARTS)
                await explained.execute(
                    "UPDATE credits SET balance_micros = 1000000 WHERE user_id = ANY($1::text[])",
                    users,
                )
                notices.clear()
                await explained.execute(
                    rollover_chunks._JUDGE_AVAILABLE, users, [5 * CREDIT] * CHUNK
                )
                decided.append(
                    await explained.fetchval(
                        "SELECT count(*) FROM auto_recharge_attempts "
                        "WHERE user_id = ANY($1::text[]) AND status = 'pending'",
                        users,
                    )
                )
                for notice in notices:
                    if "plan:" in notice:
                        plan = json.loads(notice[notice.index("{") :])
                        whole_table_scans += _seq_scans(plan["Plan"], per_user)
            finally:
                await chunk.rollback()
    finally:
        await explained.close()
        async with ledger.pool.acquire() as owner:  # rows made for the plans, not accounts
            for table in ("auto_recharge_attempts", "auto_recharge_rules", "balance_alerts"):
                await owner.execute(f"DELETE FROM {table} WHERE user_id = ANY($1::text[])", users)
            await owner.execute("DELETE FROM credits WHERE user_id = ANY($1::text[])", users)
    assert decided == [CHUNK] * PLAN_CALLS  # every account crossed its rule's threshold
    assert whole_table_scans == []


def _seq_scans(node: dict[str, Any], per_user: set[str]) -> list[str]:
    found = []
    if node.get("Node Type") == "Seq Scan" and node.get("Relation Name") in per_user:
        found.append(str(node["Relation Name"]))
    for child in node.get("Plans", []):
        found += _seq_scans(child, per_user)
    return found
