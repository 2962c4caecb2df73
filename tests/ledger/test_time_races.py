"""Time, locks and expiry agree under concurrency: the races that spent expired credits.

Each test forces its interleaving by holding a lock from a connection of its own (an account's
``credits`` row, or an idempotency key inserted but not committed), so the race happens every
time instead of once in a while. The clock is the test's: it is moved while a write waits.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.server import app
from creditwallet.server.clock import ManualClock
from creditwallet.v1 import common_pb2 as pb
from google.protobuf.timestamp_pb2 import Timestamp

from tests import harness
from tests.harness import Ledger

CREDIT = 1_000_000
WAIT_SECONDS = 20.0
POLL_SECONDS = 0.005


def _ts(value: dt.datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def _user(prefix: str) -> str:
    return f"{prefix}-{harness.new_user()}"


async def _until(condition: Any) -> None:
    async with asyncio.timeout(WAIT_SECONDS):
        while not condition():
            await asyncio.sleep(POLL_SECONDS)


async def _hold_account(dsn: str, user_id: str) -> asyncpg.Connection[asyncpg.Record]:
    """A connection holding the account's row lock until it commits."""
    conn = await asyncpg.connect(dsn)
    await conn.execute("BEGIN")
    await conn.execute("SELECT 1 FROM credits WHERE user_id = $1 FOR UPDATE", user_id)
    return conn


async def _release(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    await conn.execute("COMMIT")
    await conn.close()


@dataclasses.dataclass
class Target:
    """Account A of the race: L1 (10 credits, expiring at E) and L2 (100, never); a debit d0 of
    5 credits taken from L1, so that reversing it gives 5 credits back to L1."""

    user_id: str
    expires_at: dt.datetime
    d0: str


async def _target(ledger: Ledger, admin: AsyncCreditWalletClient) -> Target:
    user = _user("z-target")
    expires_at = ledger.clock.now() + dt.timedelta(hours=1)
    await admin.grant(
        user, 10 * CREDIT, pb.LOT_SOURCE_PROMO, expires_at=expires_at, create_account=True
    )
    await admin.grant(user, 100 * CREDIT, pb.LOT_SOURCE_TOP_UP)
    d0 = await admin.debit(user, amount_micros=5 * CREDIT)
    ledger.clock.set(expires_at - dt.timedelta(milliseconds=1))
    return Target(user, expires_at, d0.transaction_id)


async def _reverse_after_expiry(
    ledger: Ledger, admin: AsyncCreditWalletClient, target: Target
) -> None:
    ledger.clock.set(target.expires_at + dt.timedelta(milliseconds=3))
    await admin.reverse_debit(target.user_id, target.d0)


async def _expect_97(ledger: Ledger, admin: AsyncCreditWalletClient, target: Target) -> None:
    balance = await admin.get_balance(target.user_id)
    assert balance.available_micros == 97 * CREDIT, "expired credits were spent"
    report = await admin.verify_ledger()
    assert report.ok, [f"{v.invariant} {v.user_id}: {v.detail}" for v in report.violations]


async def test_a_batch_waiting_on_another_account_never_spends_expired_credits(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    batcher = ledger.running.runtime.debits
    target = await _target(ledger, admin)
    busy, plug = _user("a-busy"), _user("m-plug")
    for user in (busy, plug):
        await admin.grant(user, 10 * CREDIT, pb.LOT_SOURCE_TOP_UP, create_account=True)
    agent = ledger.client("agent")
    watch = await asyncpg.connect(ledger.dsn)
    plug_lock = await _hold_account(ledger.dsn, plug)
    busy_lock = await _hold_account(ledger.dsn, busy)
    try:
        # Fill both batches in flight with debits stuck on `plug`, so the next two debits
        # queue up and form one batch: Debit(busy) sorts first, Debit(target) second.
        stuck = [asyncio.ensure_future(agent.debit(plug, amount_micros=1)) for _ in range(2)]
        await harness.waiting_on_locks(watch, 2)
        pair = [
            asyncio.ensure_future(agent.debit(busy, amount_micros=1)),
            asyncio.ensure_future(agent.debit(target.user_id, amount_micros=3 * CREDIT)),
        ]
        await _until(lambda: batcher.queued == 2)
        await _release(plug_lock)
        await asyncio.gather(*stuck)
        await harness.waiting_on_locks(watch, 1)  # the pair's batch waits for `busy`
        await _reverse_after_expiry(ledger, admin, target)
        await _release(busy_lock)
        await asyncio.gather(*pair)
    finally:
        await watch.close()
        for conn in (plug_lock, busy_lock):
            if not conn.is_closed():
                await conn.close()
    await _expect_97(ledger, admin, target)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def one_by_one(base_dsn: str, data_dir: Path) -> AsyncIterator[Ledger]:
    """The same ledger with group commit off: every debit in its own transaction."""
    dsn = await harness.fresh_database(base_dsn)
    config = dataclasses.replace(harness.config(data_dir), debit_batching=False)
    clock = ManualClock(harness.real_now())
    running = await app.start(config, dsn=dsn, clock=clock, address="127.0.0.1:0")
    ledger = Ledger(dsn, running, clock)
    yield ledger
    await ledger.close()


async def test_a_debit_waiting_on_its_request_id_never_spends_expired_credits(
    one_by_one: Ledger,
) -> None:
    admin = one_by_one.client("admin")
    target = await _target(one_by_one, admin)
    holder = await asyncpg.connect(one_by_one.dsn)
    watch = await asyncpg.connect(one_by_one.dsn)
    try:
        # Another transaction has claimed the key and not committed: the debit waits on it.
        await holder.execute("BEGIN")
        await holder.execute(
            "INSERT INTO idempotency_records (user_id, request_id, method, request_hash, "
            "created_at) VALUES ($1, 'late-debit', 'Debit', '\\x00', now())",
            target.user_id,
        )
        late = asyncio.ensure_future(
            admin.debit(target.user_id, amount_micros=3 * CREDIT, request_id="late-debit")
        )
        await harness.waiting_on_locks(watch, 1)
        await _reverse_after_expiry(one_by_one, admin, target)
        await holder.execute("ROLLBACK")
        await late
    finally:
        await holder.close()
        await watch.close()
    await _expect_97(one_by_one, admin, target)


class TickingClock(ManualClock):
    """Moves one millisecond every time it is read: time always passes between two reads."""

    def now(self) -> dt.datetime:
        return self.advance(milliseconds=1)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def ticking(base_dsn: str, data_dir: Path) -> AsyncIterator[Ledger]:
    dsn = await harness.fresh_database(base_dsn)
    clock = TickingClock(harness.real_now())
    running = await app.start(harness.config(data_dir), dsn=dsn, clock=clock, address="127.0.0.1:0")
    ledger = Ledger(dsn, running, clock)
    yield ledger
    await ledger.close()


async def test_a_read_answers_whatever_expired_while_it_read(ticking: Ledger) -> None:
    admin = ticking.client("admin")
    user = harness.new_user()
    start = ticking.clock.now()
    for i in range(12):  # lots expiring a millisecond apart, a few reads into the future
        await admin.grant(
            user,
            CREDIT,
            pb.LOT_SOURCE_PROMO,
            expires_at=start + dt.timedelta(milliseconds=40 + i),
            create_account=True,
        )
    answers = []
    for _ in range(30):
        balance = await admin.get_balance(user)  # never INTERNAL
        answers.append(balance.available_micros)
        assert balance.available_micros == sum(g.remaining_micros for g in balance.lots)
    assert answers == sorted(answers, reverse=True)
    assert answers[-1] == 0
    report = await admin.verify_ledger()
    assert report.ok, [f"{v.invariant} {v.user_id}: {v.detail}" for v in report.violations]


@pytest.mark.parametrize("give_back", ["reverse", "void", "partial_capture"])
async def test_credits_given_back_to_an_expired_lot_expire_at_once(
    ledger: Ledger, admin: AsyncCreditWalletClient, give_back: str
) -> None:
    user = harness.new_user()
    expires_at = ledger.clock.now() + dt.timedelta(hours=1)
    await admin.grant(
        user, 10 * CREDIT, pb.LOT_SOURCE_PROMO, expires_at=expires_at, create_account=True
    )
    await admin.grant(user, 100 * CREDIT, pb.LOT_SOURCE_TOP_UP)
    if give_back == "reverse":
        spent = await admin.debit(user, amount_micros=4 * CREDIT)
        ledger.clock.set(expires_at + dt.timedelta(seconds=1))
        available = (await admin.reverse_debit(user, spent.transaction_id)).available_micros
    else:
        hold = await admin.authorize(user, amount_micros=4 * CREDIT, ttl_seconds=7200)
        ledger.clock.set(expires_at + dt.timedelta(seconds=1))
        if give_back == "void":
            available = (await admin.void(user, hold.hold_id)).available_micros
        else:
            captured = await admin.capture(user, hold.hold_id, amount_micros=CREDIT)
            available = captured.available_micros
    after = await admin.get_balance(user)
    assert available == after.available_micros, "the reply counted credits that had expired"
    assert (
        after.available_micros
        == {
            "reverse": 100 * CREDIT,
            "void": 100 * CREDIT,
            # The hold reserved its credits while the lot was live, so the capture spends them;
            # what it gives back to the expired lot expires with the rest of the lot.
            "partial_capture": 100 * CREDIT,
        }[give_back]
    )
    report = await admin.verify_ledger()
    assert report.ok, [f"{v.invariant} {v.user_id}: {v.detail}" for v in report.violations]


async def test_replicas_with_different_clocks_keep_each_account_in_order(
    base_dsn: str, data_dir: Path
) -> None:
    """Two replicas on one database, one clock ten minutes behind the other: the slow one
    writes at the account's own time, so its history never goes back, and a lot the fast
    replica saw expire stays expired for the slow one."""
    dsn = await harness.fresh_database(base_dsn)
    fast_clock = ManualClock(harness.real_now())
    slow_clock = ManualClock(fast_clock.now() - dt.timedelta(minutes=10))
    fast = Ledger(
        dsn,
        await app.start(harness.config(data_dir), dsn=dsn, clock=fast_clock, address="127.0.0.1:0"),
        fast_clock,
    )
    slow = Ledger(
        dsn,
        await app.start(harness.config(data_dir), dsn=dsn, clock=slow_clock, address="127.0.0.1:0"),
        slow_clock,
    )
    try:
        on_fast, on_slow = fast.client("admin"), slow.client("admin")
        user = harness.new_user()
        expires_at = fast_clock.now() - dt.timedelta(minutes=5)  # past for fast, future for slow
        await on_slow.grant(
            user, 10 * CREDIT, pb.LOT_SOURCE_PROMO, expires_at=expires_at, create_account=True
        )
        await on_slow.grant(user, 10 * CREDIT, pb.LOT_SOURCE_TOP_UP)
        assert (await on_slow.get_balance(user)).available_micros == 20 * CREDIT
        await on_fast.debit(user, amount_micros=CREDIT)  # records the promo's expiry
        after = await on_slow.debit(user, amount_micros=CREDIT)  # the slow replica's turn
        assert after.available_micros == 8 * CREDIT, "the slow replica spent expired credits"
        history = await on_slow.list_transactions(user, page_size=50)
        times = [t.created_at.ToDatetime(dt.UTC) for t in reversed(history.transactions)]
        assert times == sorted(times)
        assert times[-1] >= fast_clock.now() - dt.timedelta(seconds=1)
        report = await on_slow.verify_ledger()
        assert report.ok, [f"{v.invariant} {v.user_id}: {v.detail}" for v in report.violations]
    finally:
        await fast.close()
        await slow.close()


async def test_verify_reports_a_debit_that_spent_a_lot_after_its_expiry(
    base_dsn: str, data_dir: Path
) -> None:
    """The check that no debit is dated at or after the expiry of a lot it consumed, seen
    failing: the history is tampered with as a buggy write would have left it (a debit dated
    after the expiry of the lot it burnt), as the database's superuser, since the server's
    role may not rewrite history."""
    ledger = await harness.start_ledger(base_dsn, data_dir)
    try:
        admin = ledger.client("admin")
        user = harness.new_user()
        expires_at = ledger.clock.now() + dt.timedelta(hours=1)
        await admin.grant(
            user, 5 * CREDIT, pb.LOT_SOURCE_PROMO, expires_at=expires_at, create_account=True
        )
        spent = await admin.debit(user, amount_micros=CREDIT)
        assert (await admin.verify_ledger()).ok
        database = urllib.parse.urlsplit(ledger.dsn).path.lstrip("/")
        superuser = await asyncpg.connect(harness.dsn_for(base_dsn, database))
        try:
            await superuser.execute(
                "UPDATE credit_transactions SET created_at = $3 "
                "WHERE user_id = $1 AND transaction_id = $2",
                user,
                int(spent.transaction_id),
                expires_at + dt.timedelta(seconds=1),
            )
        finally:
            await superuser.close()
        report = await admin.verify_ledger()
        assert any(
            f"transaction {spent.transaction_id} spent lot" in v.detail
            and "at or after its expiry" in v.detail
            for v in report.violations
        ), [v.detail for v in report.violations]
    finally:
        await ledger.close()


async def test_verify_reports_credits_given_back_to_an_expired_lot_and_expired_later(
    base_dsn: str, data_dir: Path
) -> None:
    """A reversal into a lot that expired since the debit gives the credits back and expires
    them in its own write (two expire rows for the lot: the sweep's and the give-back's). The
    history is then tampered with as the bug would have left it, the second expiry written by
    a later transaction, and the check that survives later sweeps must report it."""
    ledger = await harness.start_ledger(base_dsn, data_dir)
    try:
        admin = ledger.client("admin")
        user = harness.new_user()
        expires_at = ledger.clock.now() + dt.timedelta(hours=1)
        await admin.grant(
            user, 10 * CREDIT, pb.LOT_SOURCE_PROMO, expires_at=expires_at, create_account=True
        )
        await admin.grant(user, 100 * CREDIT, pb.LOT_SOURCE_TOP_UP)
        spent = await admin.debit(user, amount_micros=5 * CREDIT)
        ledger.clock.advance(hours=1, minutes=1)
        reversed_ = await admin.reverse_debit(user, spent.transaction_id)
        assert reversed_.available_micros == 100 * CREDIT
        assert (await admin.verify_ledger()).ok
        database = urllib.parse.urlsplit(ledger.dsn).path.lstrip("/")
        superuser = await asyncpg.connect(harness.dsn_for(base_dsn, database))
        try:
            expiries = await superuser.fetch(
                "SELECT transaction_id, xact_id FROM credit_transactions "
                "WHERE user_id = $1 AND type = 'expire' ORDER BY transaction_id",
                user,
            )
            assert len(expiries) == 2  # the sweep's 5, then the 5 that came back
            await superuser.execute(
                "UPDATE credit_transactions SET xact_id = pg_current_xact_id() "
                "WHERE user_id = $1 AND transaction_id = $2",
                user,
                expiries[1]["transaction_id"],
            )
        finally:
            await superuser.close()
        report = await admin.verify_ledger()
        assert any(
            f"transaction {expiries[1]['transaction_id']} expired credits that had come back"
            in v.detail
            for v in report.violations
        ), [v.detail for v in report.violations]
    finally:
        await ledger.close()
