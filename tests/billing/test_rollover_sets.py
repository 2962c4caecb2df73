"""The set-based rollover chunk: what doing all of a chunk's accounts at once could break.

Each chunk locks its accounts, reads them one statement per table and writes them one
statement per kind of work. These tests attack that: an account of the chunk locked by a
concurrent debit (the chunk waits and applies once, whoever goes first), the chunk's
connection killed in the middle of its write (nothing of the chunk stays, the next run does
it exactly once), the carry-over cap of several accounts computed in one pass, and the events
the chunk emits itself in place of the row trigger (one per history row, the trigger's body,
in each account's order).

The module has its own database; each test first records what earlier tests left due.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from typing import Any

import pytest
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.server import errors
from creditwallet.server.ledger import rollover
from creditwallet.v1 import billing_service_pb2 as bpb
from creditwallet.v1 import common_pb2 as pb

from tests.billing.test_carry_over_cap import Downgrade, _capped
from tests.billing.test_rollover import pay, ts
from tests.harness import Ledger, new_user

pytestmark = pytest.mark.usefixtures("verified")

CREDIT = 1_000_000
UTC = dt.UTC
WAIT_SECONDS = 60.0
POLL_SECONDS = 0.02


async def _flush(ledger: Ledger) -> None:
    await rollover.run(ledger.pool, "2029-01", ledger.clock)


async def _due_promos(ledger: Ledger, admin: AsyncCreditWalletClient, count: int) -> list[str]:
    """Accounts with 3 promo credits expiring tomorrow and 2 top-up credits; then 2 days on."""
    users = sorted(new_user() for _ in range(count))
    soon = ledger.clock.now() + dt.timedelta(days=1)
    for user in users:
        await admin.grant(
            user, 3 * CREDIT, pb.LOT_SOURCE_PROMO, expires_at=soon, create_account=True
        )
        await admin.grant(user, 2 * CREDIT, pb.LOT_SOURCE_TOP_UP)
    ledger.clock.advance(days=2)
    return users


async def _expire_rows(ledger: Ledger, users: list[str]) -> dict[str, list[int]]:
    rows = await ledger.pool.fetch(
        "SELECT user_id, amount_micros FROM credit_transactions "
        "WHERE type = 'expire' AND user_id = ANY($1::text[]) ORDER BY transaction_id",
        users,
    )
    found: dict[str, list[int]] = {u: [] for u in users}
    for row in rows:
        found[row["user_id"]].append(-row["amount_micros"] // CREDIT)
    return found


async def _waiting(ledger: Ledger, count: int, like: str = "%") -> list[int]:
    """The backends waiting on a lock (at least ``count``), whose query matches ``like``."""
    async with asyncio.timeout(WAIT_SECONDS):
        while True:
            pids = [
                r["pid"]
                for r in await ledger.pool.fetch(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND query LIKE $1",
                    like,
                )
            ]
            if len(pids) >= count:
                return pids
            await asyncio.sleep(POLL_SECONDS)


@pytest.mark.parametrize("debit_first", [False, True], ids=["chunk-first", "debit-first"])
async def test_an_account_locked_by_a_debit_makes_the_chunk_wait_and_each_write_applies_once(
    ledger: Ledger, admin: AsyncCreditWalletClient, debit_first: bool
) -> None:
    """One account of a chunk is locked (a test connection holds its row, as a long debit
    would); the chunk and a real debit of that account both queue behind it, in either order,
    and when the lock goes both proceed: one expire row per promo lot, the debit applied
    once, every balance what it must be. (The chunk re-checks each account once locked: a
    debit that got there first has recorded the expiry itself.)"""
    await _flush(ledger)
    agent = ledger.client("agent")
    users = await _due_promos(ledger, admin, 6)
    target = users[2]
    blocker = await ledger.pool.acquire()
    try:
        held = blocker.transaction()
        await held.start()
        await blocker.execute("SELECT 1 FROM credits WHERE user_id = $1 FOR UPDATE", target)
        debit: asyncio.Future[Any] | None = None
        if debit_first:
            debit = asyncio.ensure_future(agent.debit(target, amount_micros=CREDIT))
            await _waiting(ledger, 1)
        run = asyncio.ensure_future(
            rollover.run(ledger.pool, "2029-02", ledger.clock, chunk_accounts=6)
        )
        await _waiting(ledger, 2 if debit_first else 1)
        assert await _expire_rows(ledger, users) == {u: [] for u in users}  # all or nothing
        if debit is None:
            debit = asyncio.ensure_future(agent.debit(target, amount_micros=CREDIT))
            await _waiting(ledger, 2)
        await held.rollback()
        summary, spent = await asyncio.gather(run, debit)
    finally:
        await ledger.pool.release(blocker)
    assert summary.accounts_processed == (5 if debit_first else 6)
    assert spent.available_micros == CREDIT
    assert await _expire_rows(ledger, users) == {u: [3] for u in users}
    for user in users:
        expected = CREDIT if user == target else 2 * CREDIT
        assert (await admin.get_balance(user)).available_micros == expected


async def test_a_connection_killed_mid_chunk_leaves_nothing_and_the_rerun_applies_it_once(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """The fault: the chunk's connection is killed in the middle of its write statement
    (lots zeroed and history rows inserted, the events not yet: a test connection holds one
    account's event-sequence row, so the statement waits there). That chunk leaves nothing
    behind, the run fails UNAVAILABLE, and the next run records each expiry exactly once."""
    await _flush(ledger)
    users = await _due_promos(ledger, admin, 12)
    second_chunk = users[4:8]
    blocker = await ledger.pool.acquire()
    try:
        held = blocker.transaction()
        await held.start()
        await blocker.execute(
            "SELECT 1 FROM event_accounts WHERE user_id = $1 FOR UPDATE", second_chunk[1]
        )
        run = asyncio.ensure_future(
            rollover.run(ledger.pool, "2029-03", ledger.clock, chunk_accounts=4)
        )
        (pid,) = await _waiting(ledger, 1, "%WITH cuts AS%")
        assert await blocker.fetchval("SELECT pg_terminate_backend($1)", pid)
        with pytest.raises(errors.LedgerError) as failed:
            await run
        assert failed.value.reason == "DATABASE_UNAVAILABLE"
        await held.rollback()
    finally:
        await ledger.pool.release(blocker)
    left = await _expire_rows(ledger, users)
    assert all(left[u] == [] for u in second_chunk), left  # the killed chunk: nothing
    assert all(rows in ([], [3]) for rows in left.values()), left  # the others: once at most
    lots = await ledger.pool.fetchval(
        "SELECT count(*) FROM credit_lots WHERE user_id = ANY($1::text[]) "
        "AND source = 'promo' AND remaining_micros = $2",
        second_chunk,
        3 * CREDIT,
    )
    assert lots == len(second_chunk)
    summary = await admin.rollover()
    assert summary.accounts_processed == sum(1 for rows in left.values() if not rows)
    assert await _expire_rows(ledger, users) == {u: [3] for u in users}
    for user in users:
        assert (await admin.get_balance(user)).available_micros == 2 * CREDIT


async def _downgrade(
    admin: AsyncCreditWalletClient, user: str, sub: str, when: dt.datetime
) -> None:
    """The plan changed to 100 credits a period (no payment: the state only)."""
    await admin.billing.SyncSubscription(
        bpb.SyncSubscriptionRequest(
            request_id=f"evt_{uuid.uuid4().hex}",
            subscription_id=sub,
            customer_id="cus_" + sub,
            user_id=user,
            status=pb.SUBSCRIPTION_STATUS_ACTIVE,
            price_id="price_cw_monthly_100",
            period_credits_micros=100 * CREDIT,
            event_created_at=ts(when),
        )
    )


async def test_the_carry_over_cap_of_a_chunk_cuts_each_account_as_one_at_a_time_would(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """Four subscribers of a 250-credit plan spend 0, 100, 200 and 250 of their period, the
    plan is then downgraded to 100 credits, the period ends unrenewed: one chunk caps what
    each carries at 100, the first two by 150 and 50, soonest-expiring first, one expire row
    (reason carry_over_cap) and one credits.expired event per cut."""
    start = dt.datetime(2029, 10, 1, tzinfo=UTC)
    end = dt.datetime(2029, 11, 1, tzinfo=UTC)
    ledger.clock.set(start + dt.timedelta(hours=1))
    await _flush(ledger)
    billing = ledger.client("billing")
    spent = [0, 100, 200, 250]
    users = sorted(new_user() for _ in spent)
    for user, amount in zip(users, spent, strict=True):
        await pay(billing, user, "sub_cap_" + user, start, end, start)
        if amount:
            await admin.debit(user, amount_micros=amount * CREDIT)
        await _downgrade(admin, user, "sub_cap_" + user, start + dt.timedelta(days=10))
    ledger.clock.set(end + dt.timedelta(hours=1))
    summary = await rollover.run(ledger.pool, "2029-11", ledger.clock, chunk_accounts=10)
    assert (summary.periods_settled, summary.accounts_settled) == (4, 4)
    assert (summary.accounts_capped, summary.credits_capped_micros) == (2, 200 * CREDIT)
    assert summary.credits_carried_micros == (100 + 100 + 50 + 0) * CREDIT
    assert summary.chunks == 1
    for user, amount in zip(users, spent, strict=True):
        expected = min(250 - amount, 100)
        assert (await admin.get_balance(user)).available_micros == expected * CREDIT
    cuts = await ledger.pool.fetch(
        "SELECT user_id, amount_micros, balance_after_micros, metadata->>'reason' AS reason "
        "FROM credit_transactions WHERE type = 'expire' AND user_id = ANY($1::text[]) "
        "ORDER BY user_id",
        users,
    )
    assert [(r["user_id"], -r["amount_micros"] // CREDIT) for r in cuts] == [
        (users[0], 150),
        (users[1], 50),
    ]
    assert {r["reason"] for r in cuts} == {"carry_over_cap"}
    assert [r["balance_after_micros"] // CREDIT for r in cuts] == [100, 100]
    events = await _expired_events(ledger, users)
    assert sorted(events) == sorted(
        (r["user_id"], -r["amount_micros"], r["balance_after_micros"]) for r in cuts
    )
    again = await rollover.run(ledger.pool, "2029-11", ledger.clock)
    assert (again.periods_settled, again.accounts_capped) == (0, 0)


async def _expired_events(ledger: Ledger, users: list[str]) -> list[tuple[str, int, int]]:
    rows = await ledger.pool.fetch(
        "SELECT user_id, body FROM events WHERE type = 'credits.expired' "
        "AND user_id = ANY($1::text[]) ORDER BY user_id, seq",
        users,
    )
    return [
        (
            r["user_id"],
            json.loads(r["body"])["amount_micros"],
            json.loads(r["body"])["balance_after_micros"],
        )
        for r in rows
    ]


async def test_a_chunk_emits_the_row_triggers_events_for_its_history_rows(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """Each expire row of a chunk has exactly one credits.expired event, with the body the row
    trigger builds for it (the same function), at the row's time, and each account's events
    keep their order and numbers with no gap. A debit right after, outside the rollover,
    still gets its event from the trigger."""
    await _flush(ledger)
    users = await _due_promos(ledger, admin, 5)
    later = ledger.clock.now() + dt.timedelta(hours=1)
    for user in users[:2]:  # two expiring lots for some accounts: two rows, in expiry order
        await admin.grant(user, CREDIT, pb.LOT_SOURCE_PROMO, expires_at=later)
    ledger.clock.advance(hours=2)
    summary = await rollover.run(ledger.pool, "2029-04", ledger.clock, chunk_accounts=3)
    assert summary.accounts_processed == 5
    rows = await ledger.pool.fetch(
        "SELECT t.user_id, t.transaction_id, t.created_at, "
        "       cw_history_event_body(t.type, t.transaction_id, t.amount_micros, "
        "           t.balance_after_micros, t.source, t.request_id, t.agent_id, t.quantity, "
        "           t.session_id, t.hold_id, t.related_transaction_id, t.metadata) AS body, "
        "       (SELECT array_agg(e.body ORDER BY e.seq) FROM events e "
        "        WHERE e.user_id = t.user_id AND e.type = 'credits.expired' "
        "          AND e.body->>'transaction_id' = t.transaction_id::text) AS emitted, "
        "       (SELECT array_agg(e.occurred_at) FROM events e "
        "        WHERE e.user_id = t.user_id AND e.type = 'credits.expired' "
        "          AND e.body->>'transaction_id' = t.transaction_id::text) AS occurred "
        "FROM credit_transactions t WHERE t.type = 'expire' AND t.user_id = ANY($1::text[]) "
        "ORDER BY t.user_id, t.transaction_id",
        users,
    )
    assert len(rows) == 7
    for row in rows:
        assert row["emitted"] is not None, dict(row)
        assert len(row["emitted"]) == 1, dict(row)
        assert json.loads(row["emitted"][0]) == json.loads(row["body"])
        assert row["occurred"] == [row["created_at"]]
    gaps = await ledger.pool.fetch(
        "SELECT user_id, array_agg(seq ORDER BY seq) AS seqs, "
        "       array_agg((body->>'transaction_id')::bigint ORDER BY seq) "
        "           FILTER (WHERE type = 'credits.expired') AS expired "
        "FROM events WHERE user_id = ANY($1::text[]) GROUP BY user_id",
        users,
    )
    for row in gaps:
        assert row["seqs"] == list(range(1, len(row["seqs"]) + 1)), dict(row)
        assert row["expired"] == sorted(row["expired"]), dict(row)
    agent = ledger.client("agent")
    debit = await agent.debit(users[0], amount_micros=CREDIT)
    found: Any = await ledger.pool.fetchval(
        "SELECT count(*) FROM events WHERE user_id = $1 AND type = 'credits.debited' "
        "AND body->>'transaction_id' = $2",
        users[0],
        str(debit.transaction_id),
    )
    assert found == 1


async def test_the_row_trigger_stands_aside_only_where_asked(ledger: Ledger) -> None:
    """The setting is transaction-local: once the transaction that set it is over, the
    connection (back in the pool, for any writer) has it no more."""
    async with ledger.pool.acquire() as conn:
        async with conn.transaction():
            await conn.execute(
                "SELECT set_config('creditwallet.history_events', 'statement', true)"
            )
        after = await conn.fetchval("SELECT current_setting('creditwallet.history_events', true)")
    assert after in ("", None)


async def test_a_hold_a_chunk_releases_into_a_carried_lot_is_capped_again(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """A 900-credit hold placed before a downgrade renewal (1000 -> 100 credits) expires after
    it; the rollover's chunk records the release, with an account that has only a due promo
    beside it: what comes back to the carried lot is capped again (900 expire, reason
    carry_over_cap), as a write of that one account would have done."""
    await _flush(ledger)
    d = Downgrade(ledger, admin, 2)
    await d.first_period()
    await admin.authorize(d.user, amount_micros=900 * CREDIT, ttl_seconds=2 * 3600)
    await d.renewal()
    other = new_user()
    soon = ledger.clock.now() + dt.timedelta(minutes=30)
    await admin.grant(other, 3 * CREDIT, pb.LOT_SOURCE_PROMO, expires_at=soon, create_account=True)
    ledger.clock.set(d.p1_end + dt.timedelta(hours=2))
    summary = await rollover.run(ledger.pool, "2029-12", ledger.clock, chunk_accounts=10)
    assert summary.holds_released == 1
    assert await _capped(ledger, d.user) == [900]
    assert await d.available() == 200
    assert await _expire_rows(ledger, [other]) == {other: [3]}
