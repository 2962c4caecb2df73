"""The schema is ready to be distributed by ``user_id`` (docs/scaling.md), now and later.

A per-user table is one with a ``user_id`` column. On a database sharded by ``user_id`` (Citus)
a unique index or primary key is enforced on one shard only when it contains ``user_id``, and
a foreign key between sharded tables only when it joins on ``user_id``. The catalog checks
below cover every table of the schema, so a table added by a later migration is held to the
same rules without anyone remembering to list it; the exceptions are explicit, each with why.

The second half captures every statement the server sends on the Debit, Grant and GetBalance
paths (asyncpg's query logger on the server's own pool) and checks each one's plan: every scan
of a per-user table is bounded by ``user_id``, so each statement stays on the account's shard.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.server import db, errors
from creditwallet.server.ledger import accounts, debit
from creditwallet.v1 import common_pb2

from tests import events_kit, harness

# Tables with a user_id column that are keyed by something else, and why. They are not
# distributed by user_id (see docs/scaling.md for how each is placed).
PROVIDER_KEYED = {
    # Keyed by the payment provider's objects: their rows are found by the object an event
    # names, often before the user is known (user_id is NULL until a checkout links it).
    "billing_customers": "keyed by the provider's customer id",
    "subscriptions": "keyed by the provider's subscription id",
    "subscription_periods": "keyed by (subscription id, period start)",
    "purchases": "keyed by the provider's checkout session id",
}
# Single indexes that are allowed to leave user_id out, and why.
INDEX_EXCEPTIONS = {
    # A code is redeemed by users who do not know its owner: unique across all accounts, so
    # on a sharded database it moves to a table of its own distributed by code.
    "referral_codes_code_key": "referral codes are unique across accounts",
    # The event outbox: an event's public id and its position in the one stream of all
    # accounts are unique across accounts. On a sharded database the ids (random UUIDs)
    # narrow to (user_id, event_id) and the stream's positions are given per shard.
    "events_event_id": "event ids are unique across accounts",
    "events_position": "the stream's positions order all accounts' events",
    # Auto-recharge attempts are keyed by the attempt (the payment provider's idempotency key)
    # and by the provider's payment intent: provider objects, unique across accounts.
    "auto_recharge_attempts_pkey": "keyed by the attempt, the provider's idempotency key",
    "auto_recharge_attempts_intent": "the provider's payment intent is unique",
}

_PER_USER_TABLES = """
SELECT c.oid, c.relname FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'user_id' AND NOT a.attisdropped
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
ORDER BY c.relname
"""

_UNIQUE_INDEXES = """
SELECT i.indexrelid::regclass::text AS index, c.relname AS table,
       EXISTS (SELECT 1 FROM unnest(i.indkey) k
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k
               WHERE a.attname = 'user_id') AS has_user_id
FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND (i.indisunique OR i.indisprimary)
"""

# Every foreign key, with the pairs of (referencing column, referenced column) it joins on.
_FOREIGN_KEYS = """
SELECT con.conname, src.relname AS source, dst.relname AS target,
       array_agg(sa.attname::text || '=' || da.attname::text ORDER BY k.i) AS pairs
FROM pg_constraint con
JOIN pg_class src ON src.oid = con.conrelid
JOIN pg_class dst ON dst.oid = con.confrelid
JOIN pg_namespace n ON n.oid = src.relnamespace
CROSS JOIN LATERAL unnest(con.conkey, con.confkey) WITH ORDINALITY AS k(s, d, i)
JOIN pg_attribute sa ON sa.attrelid = con.conrelid AND sa.attnum = k.s
JOIN pg_attribute da ON da.attrelid = con.confrelid AND da.attnum = k.d
WHERE con.contype = 'f' AND n.nspname = 'public'
GROUP BY con.conname, src.relname, dst.relname
"""


async def catalog(dsn: str) -> tuple[set[str], list[asyncpg.Record], list[asyncpg.Record]]:
    conn = await asyncpg.connect(dsn)
    try:
        tables = {r["relname"] for r in await conn.fetch(_PER_USER_TABLES)}
        return tables, await conn.fetch(_UNIQUE_INDEXES), await conn.fetch(_FOREIGN_KEYS)
    finally:
        await conn.close()


def distributed(tables: set[str]) -> set[str]:
    return tables - PROVIDER_KEYED.keys()


async def test_every_unique_index_of_a_per_user_table_contains_user_id(
    ledger: harness.Ledger,
) -> None:
    tables, indexes, _ = await catalog(ledger.dsn)
    assert {"credits", "credit_lots", "holds", "idempotency_records"} <= distributed(tables)
    offending = [
        (r["table"], r["index"])
        for r in indexes
        if r["table"] in distributed(tables)
        and not r["has_user_id"]
        and r["index"] not in INDEX_EXCEPTIONS
    ]
    assert not offending, f"unique without user_id (cannot be enforced per shard): {offending}"
    # The exceptions still name something real: a stale entry would hide nothing and mislead.
    names = {r["index"] for r in indexes}
    assert set(INDEX_EXCEPTIONS) <= names
    assert set(PROVIDER_KEYED) <= tables


async def test_every_foreign_key_between_per_user_tables_joins_on_user_id(
    ledger: harness.Ledger,
) -> None:
    tables, _, keys = await catalog(ledger.dsn)
    sharded = distributed(tables)
    offending = []
    for key in keys:
        source, target = key["source"], key["target"]
        if source not in sharded and target not in sharded:
            continue  # between reference or provider-keyed tables: not sharded by user
        if source in sharded and target not in tables:
            continue  # a sharded table referencing a reference table (no user_id): allowed
        if "user_id=user_id" not in key["pairs"] or not (source in sharded and target in sharded):
            offending.append((key["conname"], source, target, key["pairs"]))
    assert not offending, f"foreign keys that cross shards: {offending}"


async def test_the_catalog_check_catches_what_it_forbids(ledger: harness.Ledger) -> None:
    """Added on purpose, each check fails: a global unique index and a cross-shard key."""
    conn = await asyncpg.connect(db.dsn_with(ledger.dsn, user=db.OWNER_ROLE))
    try:
        async with conn.transaction():
            await conn.execute(
                "CREATE TABLE probe_users (user_id text PRIMARY KEY, token text UNIQUE,"
                " owner_id text REFERENCES credits (user_id))"
            )
            indexes = await conn.fetch(_UNIQUE_INDEXES)
            keys = await conn.fetch(_FOREIGN_KEYS)
            raise _Rollback
    except _Rollback:
        pass
    finally:
        await conn.close()
    assert [r["index"] for r in indexes if r["table"] == "probe_users" and not r["has_user_id"]]
    assert [k["pairs"] for k in keys if k["source"] == "probe_users"] == [["owner_id=user_id"]]


class _Rollback(Exception):
    pass


# --- the statements of the Debit, Grant and GetBalance paths -------------------------------

_UTILITY = re.compile(r"^\s*(BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE|SET|RESET)\b", re.I)
_JOIN_CONDS = ("Hash Cond", "Merge Cond", "Join Filter")
_SCAN_CONDS = ("Index Cond", "Filter", "Recheck Cond", "TID Cond")


class Captured:
    def __init__(self) -> None:
        self.statements: list[tuple[str, tuple[Any, ...]]] = []

    def __call__(self, record: Any) -> None:
        if record.exception is None:
            self.statements.append((record.query, tuple(record.args or ())))


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> Captured:
    """Every statement the pools opened from now on send (the server's included)."""
    sink = Captured()
    original = db._init_connection

    async def init(conn: db.Connection) -> None:
        await original(conn)
        conn.add_query_logger(sink)

    monkeypatch.setattr(db, "_init_connection", init)
    return sink


@pytest_asyncio.fixture(loop_scope="session")
async def observed(
    base_dsn: str, data_dir: Path, captured: Captured
) -> AsyncIterator[tuple[harness.Ledger, Captured]]:
    """A server whose pool was opened with the query logger on, and no background loops:
    the event sequencer's statement is global by design, and caught in the window it would
    fail the check of the RPCs' paths whenever its poll happened to fall inside it."""
    ledger = await events_kit.start(base_dsn, data_dir, workers=False)
    try:
        yield ledger, captured
    finally:
        await ledger.close()


# The plan of every statement a database function runs, as a JSON notice (needs a superuser
# connection for LOAD).
AUTO_EXPLAIN_NESTED = (
    "LOAD 'auto_explain'",
    "SET auto_explain.log_min_duration = 0",
    "SET auto_explain.log_nested_statements = on",
    "SET auto_explain.log_level = notice",
    "SET auto_explain.log_format = json",
)


def scans_without_user_id(plan: dict[str, Any], per_user: set[str]) -> list[str]:
    """Scans of per-user tables bounded neither by their own condition on user_id nor by the
    join above them (a join on user_id with a side that is bounded)."""
    missing: list[str] = []

    def walk(node: dict[str, Any], parent_conds: str) -> None:
        table = node.get("Relation Name")
        own = " ".join(str(node.get(k, "")) for k in _SCAN_CONDS)
        scan = table in per_user and "Scan" in node.get("Node Type", "")
        if scan and "user_id" not in own and "user_id" not in parent_conds:
            missing.append(f"{node['Node Type']} on {table}")
        joins = " ".join(str(node.get(k, "")) for k in _JOIN_CONDS)
        for child in node.get("Plans", []):
            walk(child, joins)

    walk(plan, "")
    return missing


def inserts_without_user_id(query: str, per_user: set[str]) -> list[str]:
    """Per-user tables a statement inserts into without naming user_id (Citus routes a row
    by the user_id it carries)."""
    return [
        table
        for table, columns in re.findall(r"INSERT INTO (\w+)\s*\(([^)]*)\)", query, re.I)
        if table in per_user and "user_id" not in (c.strip() for c in columns.split(","))
    ]


async def check_statements(dsn: str, statements: list[tuple[str, tuple[Any, ...]]]) -> list[str]:
    tables, _, _ = await catalog(dsn)
    per_user = distributed(tables)
    problems = []
    conn = await asyncpg.connect(dsn)
    try:
        for query, args in statements:
            if _UTILITY.match(query):
                continue
            # EXPLAIN without ANALYZE plans the statement with its real arguments and runs
            # nothing, so the writes of the path are planned, not repeated.
            raw = await conn.fetchval(f"EXPLAIN (VERBOSE, FORMAT JSON) {query}", *args)
            plan = json.loads(raw)[0]["Plan"]
            for scan in scans_without_user_id(plan, per_user):
                problems.append(f"{scan}: {' '.join(query.split())[:160]}")
            for table in inserts_without_user_id(query, per_user):
                problems.append(f"INSERT into {table} without user_id: {query[:160]}")
    finally:
        await conn.close()
    return problems


async def test_debit_grant_and_get_balance_send_only_statements_bounded_by_user_id(
    observed: tuple[harness.Ledger, Captured],
) -> None:
    ledger, captured = observed
    admin = ledger.client("admin")
    agent: AsyncCreditWalletClient = ledger.client("agent")
    user = harness.new_user()
    await admin.ensure_account(user)
    captured.statements.clear()

    await admin.grant(user, 3_000_000, common_pb2.LOT_SOURCE_TOP_UP, request_id="g-1")
    await agent.debit(user, amount_micros=1_000_000, request_id="d-1")  # the day's first
    await agent.debit(user, amount_micros=1_000_000, request_id="d-2")
    await agent.debit(user, amount_micros=1_000_000, request_id="d-1")  # a replay
    await agent.get_balance(user)
    paths = list(captured.statements)
    assert len(paths) >= 10, paths  # the paths were really observed

    problems = await check_statements(ledger.dsn, paths)
    assert not problems, "\n".join(problems)


async def test_the_statement_check_catches_a_scan_without_user_id(
    observed: tuple[harness.Ledger, Captured],
) -> None:
    ledger, _ = observed
    problems = await check_statements(
        ledger.dsn,
        [
            ("SELECT user_id FROM holds WHERE hold_id = $1", (uuid.UUID(int=0),)),
            ("SELECT count(*) FROM credit_lots", ()),
        ],
    )
    assert len(problems) == 2, problems


async def test_the_batch_debit_function_runs_only_statements_bounded_by_user_id(
    observed: tuple[harness.Ledger, Captured], base_dsn: str
) -> None:
    """cw_debit_many runs its statements inside the database, where the statement check above
    cannot see them: auto_explain reports the plan of each nested statement as a notice, for
    a batch that takes every branch (a priced agent, restricted lots, a member, an overdraft,
    a refusal, a day's first debit and a later one), then the batch is rolled back."""
    ledger, _ = observed
    admin = ledger.client("admin")
    plain, rich = harness.new_user(), harness.new_user()
    await admin.set_agent_price("dist-agent", 100_000)
    for user in (plain, rich):
        await admin.ensure_account(user)
    await admin.grant(rich, 1_000_000, common_pb2.LOT_SOURCE_PROMO, agent_ids=["dist-agent"])
    await admin.set_member(rich, "m", cap_micros=10_000_000)
    await admin.set_overdraft_limit(rich, 1_000_000)
    cmds = [
        debit.DebitCommand(plain, "p-1", 1_000, None, None, "", {}),
        debit.DebitCommand(plain, "p-2", 10**9, None, None, "", {}),  # refused
        debit.DebitCommand(rich, "r-1", None, "dist-agent", 3, "s", {"k": "v"}, member_id="m"),
        debit.DebitCommand(rich, "r-2", 6_500_000, None, None, "", {}, for_agent_id="dist-agent"),
    ]
    runtime = await asyncpg.connect(ledger.dsn)
    try:
        database = await runtime.fetchval("SELECT current_database()")
    finally:
        await runtime.close()
    conn = await asyncpg.connect(db.dsn_with(base_dsn, database=database))  # LOAD needs it
    notices: list[str] = []
    conn.add_log_listener(lambda _, message: notices.append(message.message))
    try:
        for setting in (*AUTO_EXPLAIN_NESTED, "SET auto_explain.log_verbose = on"):
            await conn.execute(setting)
        batch = conn.transaction()
        await batch.start()
        try:
            locked = await accounts.lock_many(conn, [plain, rich], ledger.clock)
            notices.clear()
            outcomes = await debit.debit_many(conn, cmds, locked)
        finally:
            await batch.rollback()
    finally:
        await conn.close()
    kinds = [o.reason if isinstance(o, errors.LedgerError) else "applied" for o in outcomes]
    assert kinds == ["applied", "INSUFFICIENT_CREDITS", "applied", "applied"], outcomes
    plans = [json.loads(n[n.index("{") :]) for n in notices if "plan:" in n]
    queries = " ".join(p["Query Text"] for p in plans)
    for table in ("credit_lots", "agent_pricing", "account_members", "streaks"):
        assert table in queries, f"no statement on {table} was seen: {queries[:300]}"
    tables, _, _ = await catalog(ledger.dsn)
    per_user = distributed(tables)
    problems = [
        f"{scan}: {' '.join(p['Query Text'].split())[:160]}"
        for p in plans
        for scan in scans_without_user_id(p["Plan"], per_user)
    ] + [
        f"INSERT into {table} without user_id"
        for p in plans
        for table in inserts_without_user_id(p["Query Text"], per_user)
    ]
    assert not problems, "\n".join(problems)
