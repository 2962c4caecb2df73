"""A reviewer's attacks on the ledger core, subscription periods and the events outbox.

Each test either fails on a real bug (its docstring names the finding) or passes and
documents a guarantee that was attacked and held. Interleavings are forced by holding a row
lock from a connection of the test's own (the batcher's two in-flight batches are parked on
a locked "plug" account so the debits that follow queue up and form one batch), and time
moves only by the ManualClock.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from creditwallet.client import errors as cw
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.server import metrics
from creditwallet.v1 import admin_service_pb2 as apb
from creditwallet.v1 import billing_service_pb2 as bpb
from creditwallet.v1 import common_pb2 as pb
from creditwallet.v1 import events_pb2 as epb
from creditwallet.v1 import wallet_service_pb2 as wpb
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests import events_kit, harness
from tests.harness import Ledger

CREDIT = 1_000_000
WAIT_SECONDS = 20.0
POLL_SECONDS = 0.005
UTC = dt.UTC


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def ledger(base_dsn: str, data_dir: Path) -> AsyncIterator[Ledger]:
    # No background loops: nothing but the test takes locks, and events are read as rows.
    running = await events_kit.start(
        base_dsn, data_dir, balance_low_default_micros=0, workers=False
    )
    yield running
    await running.close()


# ---------------------------------------------------------------------------------------------
# helpers


def _user(prefix: str = "u") -> str:
    return f"{prefix}-{harness.new_user()}"


def _ts(value: dt.datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


async def _connect(ledger: Ledger) -> asyncpg.Connection[asyncpg.Record]:
    return await asyncpg.connect(ledger.dsn)


async def _fetch(ledger: Ledger, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await _connect(ledger)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


async def _history(ledger: Ledger, user: str) -> list[asyncpg.Record]:
    return await _fetch(
        ledger,
        "SELECT * FROM credit_transactions WHERE user_id = $1 ORDER BY transaction_id",
        user,
    )


async def _events(ledger: Ledger, user: str) -> list[dict[str, Any]]:
    return await events_kit.events_of(ledger.dsn, user)


def _alerts(events: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(e["type"], e["body"]) for e in events if e["type"].startswith("balance.")]


async def _verify(admin: AsyncCreditWalletClient, *users: str) -> list[str]:
    """VerifyLedger's violations; with ``users``, only theirs and the global ones (one test's
    finding must not fail the next test, which shares the database)."""
    report = await admin.verify_ledger()
    return [
        f"{v.invariant} {v.user_id}: {v.detail}"
        for v in report.violations
        if not users or v.user_id in users or not v.user_id
    ]


async def _waiting_on_locks(conn: asyncpg.Connection[asyncpg.Record], count: int) -> None:
    async with asyncio.timeout(WAIT_SECONDS):
        while True:
            waiting = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if waiting >= count:
                return
            await asyncio.sleep(POLL_SECONDS)


async def _until(condition: Any) -> None:
    async with asyncio.timeout(WAIT_SECONDS):
        while not condition():
            await asyncio.sleep(POLL_SECONDS)


async def _hold_account(ledger: Ledger, user_id: str) -> asyncpg.Connection[asyncpg.Record]:
    conn = await _connect(ledger)
    await conn.execute("BEGIN")
    await conn.execute("SELECT 1 FROM credits WHERE user_id = $1 FOR UPDATE", user_id)
    return conn


async def _release(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    if not conn.is_closed():
        await conn.execute("COMMIT")
        await conn.close()


async def _funded(
    admin: AsyncCreditWalletClient, credits: int, *, prefix: str = "u", **grant: Any
) -> str:
    user = _user(prefix)
    await admin.grant(
        user,
        credits * CREDIT,
        grant.pop("source", pb.LOT_SOURCE_TOP_UP),
        create_account=True,
        **grant,
    )
    return user


async def _set_alert(admin: AsyncCreditWalletClient, user: str, threshold: int) -> None:
    await admin.admin.SetBalanceAlert(
        epb.SetBalanceAlertRequest(user_id=user, threshold_micros=threshold)
    )


class OneBatch:
    """Parks both in-flight batches on a locked account, so what is submitted next queues up
    and forms a single batch when the plug is pulled."""

    def __init__(self, ledger: Ledger, admin: AsyncCreditWalletClient) -> None:
        self.ledger = ledger
        self.admin = admin
        self.batcher = ledger.running.runtime.debits
        self.stuck: list[asyncio.Future[Any]] = []

    async def __aenter__(self) -> OneBatch:
        plug = await _funded(self.admin, 10, prefix="m-plug")
        self.watch = await _connect(self.ledger)
        self.plug = await _hold_account(self.ledger, plug)
        agent = self.ledger.client("agent")
        self.stuck = [
            asyncio.ensure_future(agent.debit(plug, amount_micros=1))
            for _ in range(self.batcher._in_flight_max)
        ]
        await _waiting_on_locks(self.watch, len(self.stuck))
        return self

    async def queued(self, count: int) -> None:
        await _until(lambda: self.batcher.queued >= count)

    async def pull(self) -> None:
        await _release(self.plug)
        await asyncio.gather(*self.stuck)

    async def __aexit__(self, *exc: object) -> None:
        await _release(self.plug)
        await self.watch.close()


# ---------------------------------------------------------------------------------------------
# events: balance alerts


async def test_void_whose_credits_expire_at_once_fires_no_balance_alert(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """FINDING: a Void (or a hold's expiry, or the unspent part of a capture) whose credits
    come back to an expired lot and expire in the same write leaves the available balance
    exactly where it was, yet emits balance.low and balance.depleted: the deferred trigger
    sees the give-back's UPDATE (available up) and the expiry's UPDATE (available down) as
    two changes, and the second one 'crosses' the line."""
    clock = ledger.clock
    expires = clock.now() + dt.timedelta(hours=1)
    user = await _funded(admin, 5, source=pb.LOT_SOURCE_PROMO, expires_at=expires)
    await _set_alert(admin, user, 2 * CREDIT)
    hold = await admin.authorize(user, amount_micros=5 * CREDIT, ttl_seconds=24 * 3600)
    assert hold.available_micros == 0  # balance.low and balance.depleted, legitimately
    before = _alerts(await _events(ledger, user))
    assert [t for t, _ in before] == ["balance.low", "balance.depleted"]

    clock.set(expires + dt.timedelta(minutes=1))
    voided = await admin.void(user, hold.hold_id)
    assert voided.available_micros == 0  # the 5 credits came back to an expired lot
    after = _alerts(await _events(ledger, user))
    assert after == before, f"an unchanged available balance raised {after[len(before) :]}"
    assert await _verify(admin, user) == []


async def test_reversal_into_an_expired_lot_fires_no_balance_alert(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """FINDING (same root cause): ReverseDebit of a debit whose lot has expired since gives
    the credits back and expires them at once: available 1 -> 1, yet balance.low fires."""
    clock = ledger.clock
    expires = clock.now() + dt.timedelta(hours=1)
    user = await _funded(admin, 4, source=pb.LOT_SOURCE_PROMO, expires_at=expires)
    await admin.grant(user, CREDIT, pb.LOT_SOURCE_TOP_UP)
    await _set_alert(admin, user, 2 * CREDIT)
    spent = await admin.debit(user, amount_micros=4 * CREDIT)  # 5 -> 1: crosses 2
    before = _alerts(await _events(ledger, user))
    assert [t for t, _ in before] == ["balance.low"]

    clock.set(expires + dt.timedelta(minutes=1))
    reversed_ = await admin.reverse_debit(user, spent.transaction_id)
    assert reversed_.available_micros == CREDIT
    after = _alerts(await _events(ledger, user))
    assert after == before, f"an unchanged available balance raised {after[len(before) :]}"
    assert await _verify(admin, user) == []


async def test_one_balance_low_per_crossing_under_concurrency_and_after_rearm(
    ledger: Ledger, admin: AsyncCreditWalletClient, agent: AsyncCreditWalletClient
) -> None:
    """HELD: 60 concurrent debits (group commit on) crossing the threshold give one alert;
    a reversal above the line re-arms it; the next crossing gives exactly one more; the
    account's event numbers have no gap."""
    user = await _funded(admin, 10)
    await _set_alert(admin, user, 5 * CREDIT)
    debits = await asyncio.gather(
        *(agent.debit(user, amount_micros=CREDIT // 10) for _ in range(60))
    )
    assert len({d.transaction_id for d in debits}) == 60
    alerts = _alerts(await _events(ledger, user))
    assert [t for t, _ in alerts] == ["balance.low"]
    # 4 credits left; reverse 2 -> 6 (re-armed), then 30 more concurrent debits of 0.1.
    await admin.reverse_debit(user, debits[0].transaction_id)
    await admin.reverse_debit(user, debits[1].transaction_id)
    await admin.grant(user, 2 * CREDIT, pb.LOT_SOURCE_PROMO)
    await asyncio.gather(*(agent.debit(user, amount_micros=CREDIT // 10) for _ in range(30)))
    events = await _events(ledger, user)
    assert [t for t, _ in _alerts(events)] == ["balance.low", "balance.low"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert await _verify(admin, user) == []


# ---------------------------------------------------------------------------------------------
# group commit: one batch, duplicated keys, a bad debit mid-batch


async def test_a_request_id_twice_in_one_batch_with_different_bodies(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """HELD: the same request_id twice in one batch: with the same body the copy is a replay
    of the first (same transaction, replayed=true); with another body it is
    REQUEST_ID_REUSED; either way one debit is written, and a later retry replays it."""
    user = await _funded(admin, 10)
    agent = ledger.client("agent")
    async with OneBatch(ledger, admin) as batch:
        calls = [
            asyncio.ensure_future(agent.debit(user, amount_micros=CREDIT, request_id="dup-a")),
            asyncio.ensure_future(agent.debit(user, amount_micros=CREDIT, request_id="dup-a")),
            asyncio.ensure_future(agent.debit(user, amount_micros=CREDIT, request_id="dup-b")),
            asyncio.ensure_future(agent.debit(user, amount_micros=2 * CREDIT, request_id="dup-b")),
        ]
        await batch.queued(4)
        await batch.pull()
        answers = await asyncio.gather(*calls, return_exceptions=True)
    a1, a2, b1, b2 = answers
    assert not isinstance(a1, BaseException)
    assert not isinstance(a2, BaseException)
    assert a1.transaction_id == a2.transaction_id
    assert sorted((a1.replayed, a2.replayed)) == [False, True]
    assert a1.available_micros == a2.available_micros
    first = a1 if not a1.replayed else a2
    # Which copy of dup-b came first is the network's choice; exactly one was applied.
    ok = [b for b in (b1, b2) if not isinstance(b, BaseException)]
    refused = [b for b in (b1, b2) if isinstance(b, BaseException)]
    assert len(ok) == 1, answers
    assert len(refused) == 1, answers
    assert isinstance(refused[0], cw.RequestIdReused), refused[0]
    assert not ok[0].replayed
    rows = [r for r in await _history(ledger, user) if r["type"] == "debit"]
    assert sorted(r["request_id"] for r in rows) == ["dup-a", "dup-b"]
    assert {r["request_id"]: -r["amount_micros"] for r in rows}["dup-b"] == ok[0].charged_micros
    again = await agent.debit(user, amount_micros=CREDIT, request_id="dup-a")
    assert (again.transaction_id, again.replayed) == (first.transaction_id, True)
    assert again.available_micros == first.available_micros
    assert await _verify(admin, user) == []


async def test_a_bad_debit_mid_batch_aborts_and_reruns_without_a_trace(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """HELD: a debit refused late (price x quantity beyond the bound, found inside the batch)
    aborts its batch; everything the batch wrote (history, lots, claims, trigger-written
    events, deferred balance alerts) is rolled back and each debit reruns alone: the good
    ones apply once, with one event each, and the bad one's key stays free."""
    agent_id = f"agent-{uuid.uuid4().hex[:8]}"
    await admin.set_agent_price(agent_id, 2 * CREDIT)
    user = await _funded(admin, 10)
    other = await _funded(admin, 10)
    await _set_alert(admin, user, 9 * CREDIT)
    agent = ledger.client("agent")
    aborted = metrics.DEBIT_BATCHES_ABORTED._value.get()
    async with OneBatch(ledger, admin) as batch:
        calls = [
            asyncio.ensure_future(agent.debit(user, amount_micros=CREDIT, request_id="g1")),
            asyncio.ensure_future(
                agent.debit(user, agent_id=agent_id, quantity=10**9, request_id="g2-bad")
            ),
            asyncio.ensure_future(agent.debit(user, amount_micros=CREDIT, request_id="g3")),
            asyncio.ensure_future(agent.debit(other, amount_micros=CREDIT, request_id="g1")),
        ]
        await batch.queued(4)
        await batch.pull()
        answers = await asyncio.gather(*calls, return_exceptions=True)
    assert metrics.DEBIT_BATCHES_ABORTED._value.get() == aborted + 1, "not one aborted batch"
    g1, bad, g3, o1 = answers
    assert isinstance(bad, cw.InvalidArgument), bad
    for ok in (g1, g3, o1):
        assert not isinstance(ok, BaseException), ok
        assert not ok.replayed
    events = await _events(ledger, user)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert [e["type"] for e in events].count("credits.debited") == 2
    assert [t for t, _ in _alerts(events)] == ["balance.low"]
    claims = await _fetch(
        ledger,
        "SELECT request_id FROM idempotency_records WHERE user_id = $1 AND method = 'Debit'",
        user,
    )
    assert sorted(r["request_id"] for r in claims) == ["g1", "g3"]
    fixed = await agent.debit(user, agent_id=agent_id, quantity=1, request_id="g2-bad")
    assert fixed.charged_micros == 2 * CREDIT
    assert not fixed.replayed
    assert await _verify(admin, user, other) == []


async def test_a_caller_that_goes_away_mid_batch_still_gets_one_debit(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """HELD: a debit whose caller's deadline passes while its batch waits on the account
    lock is still applied exactly once; the retry with the same request_id replays it (same
    transaction, same figures), and a cancelled client task changes nothing either."""
    user = await _funded(admin, 10)
    agent = ledger.client("agent", timeout_seconds=0.5)
    patient = ledger.client("agent")
    lock = await _hold_account(ledger, user)
    watch = await _connect(ledger)
    try:
        with pytest.raises(cw.DeadlineExceeded):
            await agent.debit(user, amount_micros=CREDIT, request_id="gone-1")
        task = asyncio.ensure_future(patient.debit(user, amount_micros=CREDIT, request_id="gone-2"))
        # Two waiters: gone-1's batch still waits on the server, and now gone-2's.
        await _waiting_on_locks(watch, 2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        await _release(lock)
        await watch.close()
    first = await patient.debit(user, amount_micros=CREDIT, request_id="gone-1")
    second = await patient.debit(user, amount_micros=CREDIT, request_id="gone-2")
    assert first.replayed
    assert second.replayed
    assert first.available_micros == 9 * CREDIT or second.available_micros == 9 * CREDIT
    debits = [r for r in await _history(ledger, user) if r["type"] == "debit"]
    assert len(debits) == 2
    assert (await admin.get_balance(user)).available_micros == 8 * CREDIT
    assert await _verify(admin, user) == []


# ---------------------------------------------------------------------------------------------
# replays: the stored result decodes to the same reply


def _cleared(reply: Any) -> Any:
    copy = type(reply)()
    copy.CopyFrom(reply)
    copy.ClearField("replayed")
    return copy


async def _same_on_replay(call: Any, request: Any) -> Any:
    first = await call(request)
    again = await call(request)
    assert not first.replayed, first
    assert again.replayed, again
    assert _cleared(again) == _cleared(first), f"replay differs:\n{first}\nvs\n{again}"
    return first


async def test_every_replay_answers_exactly_what_was_first_answered(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """HELD: for every RPC under a request_id (Debit with a streak reward, Authorize with a
    UUID and a microsecond expiry, partial Capture, Void, Grant with and without expiry,
    ReverseDebit, RedeemReferralCode, RecordPurchase, RecordRefund, SyncSubscription with
    empty times, RecordPaymentFailure), the replay, made after the account moved on and the
    clock moved, is the first reply field for field (only ``replayed`` differs)."""
    clock = ledger.clock
    clock.set(clock.now().replace(microsecond=123457) + dt.timedelta(days=1))
    wallet, adm, billing = admin.wallet, admin.admin, admin.billing
    user = _user("replay")
    await admin.ensure_account(user)
    grant = await _same_on_replay(
        adm.Grant,
        apb.GrantRequest(
            user_id=user,
            request_id="g-1",
            amount_micros=50 * CREDIT,
            source=pb.LOT_SOURCE_PROMO,
            expires_at=_ts(clock.now() + dt.timedelta(days=9)),
        ),
    )
    assert grant.lot.expires_at.nanos == 123457000
    await _same_on_replay(
        adm.Grant,
        apb.GrantRequest(
            user_id=user, request_id="g-2", amount_micros=CREDIT, source=pb.LOT_SOURCE_TOP_UP
        ),
    )
    rewarded = None
    for day in range(3):  # the third consecutive day earns the 3-day milestone
        reply = await _same_on_replay(
            wallet.Debit,
            wpb.DebitRequest(user_id=user, request_id=f"d-{day}", amount_micros=CREDIT),
        )
        if reply.HasField("streak_reward"):
            rewarded = reply
        clock.advance(days=1)
    assert rewarded is not None, "no milestone reward to replay"
    hold = await _same_on_replay(
        wallet.Authorize,
        wpb.AuthorizeRequest(
            user_id=user, request_id="a-1", amount_micros=3 * CREDIT, ttl_seconds=600
        ),
    )
    assert hold.expires_at.nanos == 123457000
    await _same_on_replay(
        wallet.Capture,
        wpb.CaptureRequest(
            user_id=user, hold_id=hold.hold_id, request_id="c-1", amount_micros=CREDIT
        ),
    )
    other = await wallet.Authorize(
        wpb.AuthorizeRequest(user_id=user, request_id="a-2", amount_micros=CREDIT)
    )
    await _same_on_replay(
        wallet.Void, wpb.VoidRequest(user_id=user, hold_id=other.hold_id, request_id="v-1")
    )
    await _same_on_replay(
        adm.ReverseDebit,
        apb.ReverseDebitRequest(
            user_id=user,
            request_id="r-1",
            transaction_id=rewarded.transaction_id,
            amount_micros=CREDIT // 2,
        ),
    )
    referee = _user("referee")
    await admin.ensure_account(referee)
    code = (await admin.get_referral_code(user)).code
    await _same_on_replay(
        wallet.RedeemReferralCode,
        wpb.RedeemReferralCodeRequest(user_id=referee, code=code, request_id="ref-1"),
    )
    purchase = bpb.RecordPurchaseRequest(
        request_id=f"evt-p-{user}",
        user_id=user,
        purchase_id=f"cs-{user}",
        payment_id=f"pi-{user}",
        customer_id=f"cus-{user}",
        price_id="price_topup_100",
        credits_micros=100 * CREDIT,
        amount_paid_minor=499,
        currency="usd",
    )
    await _same_on_replay(billing.RecordPurchase, purchase)
    await _same_on_replay(
        billing.RecordRefund,
        bpb.RecordRefundRequest(
            request_id=f"evt-r-{user}", payment_id=f"pi-{user}", amount_refunded_minor=100
        ),
    )
    await _same_on_replay(  # a refund before its payment: no account, no figures
        billing.RecordRefund,
        bpb.RecordRefundRequest(
            request_id=f"evt-r0-{user}", payment_id=f"pi-none-{user}", amount_refunded_minor=1
        ),
    )
    await _same_on_replay(  # a state-only sync of an unknown customer: no times, no user
        billing.SyncSubscription,
        bpb.SyncSubscriptionRequest(
            request_id=f"evt-s-{user}",
            subscription_id=f"sub-{user}",
            customer_id=f"cus-x-{user}",
            status=pb.SUBSCRIPTION_STATUS_INCOMPLETE,
            event_created_at=_ts(clock.now()),
        ),
    )
    await _same_on_replay(
        billing.RecordPaymentFailure,
        bpb.RecordPaymentFailureRequest(
            request_id=f"evt-f-{user}",
            subscription_id=f"sub-{user}",
            customer_id=f"cus-x-{user}",
            invoice_id=f"in-{user}",
            event_created_at=_ts(clock.now()),
        ),
    )
    assert await _verify(admin, user, referee) == []


# ---------------------------------------------------------------------------------------------
# time: the clock steps back; holds and lots at the exact instant


async def test_a_clock_stepping_back_never_revives_an_expired_lot(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """HELD: once a write recorded a lot's expiry, a clock stepped back before it spends
    nothing of it (the write time is never before the account's last write), history times
    stay in commit order, and a hold placed then lives from the account's time."""
    clock = ledger.clock
    start = clock.now()
    expires = start + dt.timedelta(hours=1)
    user = await _funded(admin, 10, source=pb.LOT_SOURCE_PROMO, expires_at=expires)
    await admin.grant(user, 10 * CREDIT, pb.LOT_SOURCE_TOP_UP)
    clock.set(expires + dt.timedelta(seconds=1))
    assert (await admin.get_balance(user)).available_micros == 10 * CREDIT
    clock.set(expires - dt.timedelta(minutes=10))  # an NTP step back
    try:
        assert (await admin.get_balance(user)).available_micros == 10 * CREDIT
        with pytest.raises(cw.InsufficientCredits):
            await admin.debit(user, amount_micros=15 * CREDIT)
        hold = await admin.authorize(user, amount_micros=CREDIT, ttl_seconds=60)
        assert hold.expires_at.ToDatetime(tzinfo=UTC) == expires + dt.timedelta(seconds=61)
        await admin.debit(user, amount_micros=5 * CREDIT)
        assert (await admin.get_balance(user)).available_micros == 4 * CREDIT
        times = [r["created_at"] for r in await _history(ledger, user)]
        assert times == sorted(times)
        assert await _verify(admin, user) == []
    finally:
        clock.set(expires + dt.timedelta(minutes=5))


async def test_partial_capture_and_hold_expiry_at_the_exact_instant(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """HELD: at the instant E a lot expires, a hold placed before E is still captured from
    it (the hold's credits), the part given back expires at once, a hold whose own TTL ends
    at E is already released (HOLD_EXPIRED), and nothing of the lot stays spendable."""
    clock = ledger.clock
    expires = clock.now().replace(microsecond=0) + dt.timedelta(hours=1)
    user = await _funded(admin, 10, source=pb.LOT_SOURCE_PROMO, expires_at=expires)
    await admin.grant(user, 100 * CREDIT, pb.LOT_SOURCE_TOP_UP)
    clock.set(expires - dt.timedelta(seconds=600))
    long_hold = await admin.authorize(user, amount_micros=6 * CREDIT, ttl_seconds=3600)
    short_hold = await admin.authorize(user, amount_micros=3 * CREDIT, ttl_seconds=600)
    assert short_hold.expires_at.ToDatetime(tzinfo=UTC) == expires
    clock.set(expires)
    captured = await admin.capture(user, long_hold.hold_id, amount_micros=2 * CREDIT)
    assert (captured.charged_micros, captured.released_micros) == (2 * CREDIT, 4 * CREDIT)
    assert captured.available_micros == 100 * CREDIT
    with pytest.raises(cw.HoldExpired):
        await admin.capture(user, short_hold.hold_id)
    balance = await admin.get_balance(user)
    assert (balance.available_micros, balance.held_micros) == (100 * CREDIT, 0)
    with pytest.raises(cw.InsufficientCredits):
        await admin.debit(user, amount_micros=100 * CREDIT + 1)
    assert await _verify(admin, user) == []


async def test_reversals_of_a_capture_never_exceed_it_even_at_once(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """HELD: a capture is a debit: two concurrent full reversals of it give back once (the
    other is REVERSAL_EXCEEDS_DEBIT); a capture made after its lot expired (the hold's
    credits) reversed later gives the credits back to the expired lot, which expires them."""
    clock = ledger.clock
    expires = clock.now() + dt.timedelta(hours=1)
    user = await _funded(admin, 5, source=pb.LOT_SOURCE_PROMO, expires_at=expires)
    await admin.grant(user, 20 * CREDIT, pb.LOT_SOURCE_TOP_UP)
    hold = await admin.authorize(user, amount_micros=10 * CREDIT, ttl_seconds=7200)
    clock.set(expires + dt.timedelta(minutes=1))
    captured = await admin.capture(user, hold.hold_id, amount_micros=7 * CREDIT)
    assert captured.available_micros == 18 * CREDIT  # 20 - 5 held of it + 3 given back
    answers = await asyncio.gather(
        admin.reverse_debit(user, captured.transaction_id),
        admin.reverse_debit(user, captured.transaction_id),
        return_exceptions=True,
    )
    ok = [a for a in answers if not isinstance(a, BaseException)]
    refused = [a for a in answers if isinstance(a, BaseException)]
    assert len(ok) == 1, answers
    assert isinstance(refused[0], cw.ReversalExceedsDebit), answers
    assert ok[0].reversed_micros == 7 * CREDIT
    # 5 of the 7 came from the expired promo lot and expire at once; 2 from the top-up stay.
    assert ok[0].available_micros == 20 * CREDIT
    assert (await admin.get_balance(user)).available_micros == 20 * CREDIT
    assert await _verify(admin, user) == []


async def test_a_reversal_while_in_debt_pays_the_debt_and_expired_credits_pay_nothing(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """HELD: credits a reversal gives back while the account owes debt pay the debt (from
    live lots); what lands in a lot that has expired expires and pays nothing."""
    clock = ledger.clock
    expires = clock.now() + dt.timedelta(hours=1)
    user = await _funded(admin, 10, source=pb.LOT_SOURCE_PROMO, expires_at=expires)
    await admin.billing.RecordPurchase(
        bpb.RecordPurchaseRequest(
            request_id=f"evt-buy-{user}",
            user_id=user,
            purchase_id=f"cs-{user}",
            payment_id=f"pi-{user}",
            customer_id=f"cus-{user}",
            price_id="price_topup_100",
            credits_micros=100 * CREDIT,
            amount_paid_minor=499,
            currency="usd",
        )
    )
    spent = await admin.debit(user, amount_micros=105 * CREDIT)  # promo 10, top-up 95
    refund = await admin.billing.RecordRefund(
        bpb.RecordRefundRequest(
            request_id=f"evt-ref-{user}", payment_id=f"pi-{user}", amount_refunded_minor=499
        )
    )
    assert (refund.clawed_back_micros, refund.debt_micros) == (100 * CREDIT, 95 * CREDIT)
    with pytest.raises(cw.AccountInDebt):
        await admin.debit(user, amount_micros=1)
    clock.set(expires + dt.timedelta(minutes=1))
    back = await admin.reverse_debit(user, spent.transaction_id)
    assert back.reversed_micros == 105 * CREDIT
    balance = await admin.get_balance(user)
    assert (balance.debt_micros, balance.available_micros) == (0, 0)
    assert await _verify(admin, user) == []


# ---------------------------------------------------------------------------------------------
# a random walk over one account: every reply is what the next read shows


_OPS = st.one_of(
    st.tuples(st.just("promo"), st.integers(1, 10), st.integers(1, 30)),
    st.tuples(st.just("top_up"), st.integers(1, 10)),
    st.tuples(st.just("debit"), st.integers(1, 8)),
    st.tuples(st.just("authorize"), st.integers(1, 8), st.integers(1, 120)),
    st.tuples(st.just("capture"), st.integers(0, 5), st.integers(0, 100)),
    st.tuples(st.just("void"), st.integers(0, 5)),
    st.tuples(st.just("reverse"), st.integers(0, 5), st.integers(0, 100)),
    st.tuples(st.just("advance"), st.integers(1, 40)),
    st.tuples(st.just("burst"), st.integers(2, 6)),
)
_REFUSALS = (
    cw.InsufficientCredits,
    cw.HoldExpired,
    cw.HoldFinalized,
    cw.ReversalExceedsDebit,
)


@settings(max_examples=30)
@given(ops=st.lists(_OPS, min_size=6, max_size=16))
@example(ops=[("promo", 5, 10), ("authorize", 8, 60), ("advance", 20), ("void", 0)])
@example(ops=[("promo", 5, 10), ("debit", 8), ("advance", 20), ("reverse", 0, 100)])
@example(ops=[("promo", 5, 10), ("authorize", 8, 60), ("advance", 20), ("capture", 0, 10)])
async def test_random_walks_reply_what_the_next_read_shows(
    ledger: Ledger, admin: AsyncCreditWalletClient, ops: list[tuple[Any, ...]]
) -> None:
    """HELD: grants expiring within minutes, debits, holds captured in part or voided,
    partial reversals, concurrent bursts and the clock moving across expiries, in any order:
    every write's reply is exactly what GetBalance shows right after it, and VerifyLedger
    (invariants 1-5) stays clean for the account."""
    clock = ledger.clock
    user = await _funded(admin, 1)
    holds: list[str] = []
    debits: list[str] = []

    async def check(reply: Any) -> None:
        assert reply.available_micros == (await admin.get_balance(user)).available_micros, op

    for op in ops:
        kind = op[0]
        reply: Any
        try:
            if kind == "promo":
                expires = clock.now() + dt.timedelta(minutes=op[2])
                reply = await admin.grant(
                    user, op[1] * CREDIT, pb.LOT_SOURCE_PROMO, expires_at=expires
                )
                await check(reply)
            elif kind == "top_up":
                await check(await admin.grant(user, op[1] * CREDIT, pb.LOT_SOURCE_TOP_UP))
            elif kind == "debit":
                reply = await admin.debit(user, amount_micros=op[1] * CREDIT // 2)
                debits.append(reply.transaction_id)
                await check(reply)
            elif kind == "authorize":
                reply = await admin.authorize(
                    user, amount_micros=op[1] * CREDIT // 2, ttl_seconds=op[2] * 60
                )
                holds.append(reply.hold_id)
                await check(reply)
            elif kind == "capture" and holds:
                hold = holds[op[1] % len(holds)]
                if op[2] == 100:
                    reply = await admin.capture(user, hold)
                else:
                    reply = await admin.capture(
                        user, hold, amount_micros=max(1, op[2] * CREDIT // 100)
                    )
                debits.append(reply.transaction_id)
                await check(reply)
            elif kind == "void" and holds:
                await check(await admin.void(user, holds[op[1] % len(holds)]))
            elif kind == "reverse" and debits:
                debit = debits[op[1] % len(debits)]
                amount = None if op[2] == 100 else max(1, op[2] * CREDIT // 200)
                await check(await admin.reverse_debit(user, debit, amount_micros=amount))
            elif kind == "advance":
                clock.advance(minutes=op[1])
            elif kind == "burst":
                answers = await asyncio.gather(
                    *(admin.debit(user, amount_micros=CREDIT // 4) for _ in range(op[1])),
                    return_exceptions=True,
                )
                for a in answers:
                    if isinstance(a, BaseException):
                        assert isinstance(a, cw.InsufficientCredits), a
                    else:
                        debits.append(a.transaction_id)
        except _REFUSALS:
            pass
        except cw.InvalidArgument:  # a capture above what is held; nothing else may be
            if kind != "capture":
                raise
    assert await _verify(admin, user) == []


# ---------------------------------------------------------------------------------------------
# subscription periods


def _month(value: dt.datetime, months: int) -> dt.datetime:
    from creditwallet.server.ledger import periods

    return periods.add_months(value, months, value.day)


async def _paid(
    admin: AsyncCreditWalletClient,
    sub: str,
    user: str,
    start: dt.datetime,
    end: dt.datetime,
    credits: int,
    anchor: dt.datetime,
    payment_id: str = "",
) -> bpb.SyncSubscriptionResponse:
    """invoice.paid of [start, end) on a monthly schedule anchored at ``anchor``."""
    return await admin.billing.SyncSubscription(
        bpb.SyncSubscriptionRequest(
            request_id=f"evt_{uuid.uuid4().hex}",
            subscription_id=sub,
            customer_id=f"cus_{sub}",
            user_id=user,
            status=pb.SUBSCRIPTION_STATUS_ACTIVE,
            price_id="price_monthly",
            period_credits_micros=credits * CREDIT,
            current_period_start=_ts(start),
            current_period_end=_ts(end),
            event_created_at=_ts(start),
            schedule=bpb.BillingSchedule(
                billing_cycle_anchor=_ts(anchor),
                interval=bpb.BILLING_INTERVAL_MONTH,
                interval_count=1,
            ),
            paid_period=bpb.PaidPeriod(
                period_start=_ts(start),
                period_end=_ts(end),
                payment_id=payment_id or f"pi_{uuid.uuid4().hex}",
                amount_paid_minor=999,
                currency="usd",
            ),
        )
    )


async def test_a_hold_spanning_a_downgrade_renewal_escapes_the_carry_over_cap(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """FINDING: the carry-over cap counts only a lot's remaining credits, not what a pending
    hold reserved from it. A 1000-credit period's holder authorizes 900 just before a
    downgrade renewal to 100 credits: the cap sees 100 carried and cuts nothing; the Void
    then gives the 900 back to the carried lot. The account keeps 1000 carried credits (plus
    the new 100) where the cap allows 100."""
    clock = ledger.clock
    anchor = clock.now().replace(microsecond=0) + dt.timedelta(days=1)
    p1_end, p2_end = _month(anchor, 1), _month(anchor, 2)
    user, sub = _user("downgrade"), f"sub_{uuid.uuid4().hex[:12]}"
    clock.set(anchor + dt.timedelta(minutes=1))
    await _paid(admin, sub, user, anchor, p1_end, 1000, anchor)
    clock.set(p1_end - dt.timedelta(hours=1))
    hold = await admin.authorize(user, amount_micros=900 * CREDIT, ttl_seconds=24 * 3600)
    clock.set(p1_end + dt.timedelta(minutes=1))
    await _paid(admin, sub, user, p1_end, p2_end, 100, anchor)  # the downgraded renewal
    await admin.void(user, hold.hold_id)
    balance = await admin.get_balance(user)
    assert balance.available_micros == 200 * CREDIT, (
        f"{balance.available_micros // CREDIT} credits spendable after a renewal capped at 100"
        f" carried + 100 new; VerifyLedger says {await _verify(admin, user)}"
    )


async def test_an_earlier_end_learnt_at_the_instant_of_a_debit_is_no_violation(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """FINDING (VerifyLedger false positive): a debit at T spends a subscription lot; at the
    same ledger time T (same clock reading, or a replica behind, so now = updated_at) a paid
    period arrives that ended the lot's successor earlier, in the past. The lot's expiry
    becomes T ("an earlier end learnt late ends the lot when learnt"), which is right, but
    invariant 5 then reports the debit, dated T, as spent 'at or after its expiry T'."""
    clock = ledger.clock
    anchor = clock.now().replace(microsecond=0) + dt.timedelta(days=60)
    p1_end = _month(anchor, 1)
    user, sub = _user("cut"), f"sub_{uuid.uuid4().hex[:12]}"
    clock.set(anchor + dt.timedelta(minutes=1))
    await _paid(admin, sub, user, anchor, p1_end, 100, anchor)
    clock.set(p1_end + dt.timedelta(days=10))
    await admin.debit(user, amount_micros=10 * CREDIT)
    # Same instant: the successor period [p1_end, p1_end + 5 days) on a reset anchor.
    reset = p1_end + dt.timedelta(days=5)
    await _paid(admin, sub, user, p1_end, reset, 100, reset)
    history = await _history(ledger, user)
    assert [r["type"] for r in history][-1] == "expire"  # 90 left of the cut lot: expired
    assert await _verify(admin, user) == []


async def test_an_expiry_change_is_not_a_clawback_event(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """FINDING: the history trigger of migration 0007 maps every non-grant row that is not a
    debit, expire or reversal to ``credits.clawed_back``, so each ``expiry_change`` row (a
    subscription lot's expiry corrected, amount 0) goes out to webhooks and StreamEvents as
    a clawback of 0 credits. Nothing was clawed back; the event type is wrong (and
    ``expiry_change`` has no event type of its own in docs/events.md)."""
    clock = ledger.clock
    anchor = clock.now().replace(microsecond=0) + dt.timedelta(days=100)
    p1_end = _month(anchor, 1)
    user, sub = _user("moved"), f"sub_{uuid.uuid4().hex[:12]}"
    clock.set(anchor + dt.timedelta(minutes=1))
    await _paid(admin, sub, user, anchor, p1_end, 100, anchor)
    # The renewal ends earlier than the schedule said: P1's lot expiry moves (in the future).
    clock.set(p1_end + dt.timedelta(minutes=1))
    await _paid(admin, sub, user, p1_end, p1_end + dt.timedelta(days=20), 100, p1_end)
    changes = [r for r in await _history(ledger, user) if r["type"] == "expiry_change"]
    assert len(changes) == 1
    events = {e["body"].get("transaction_id"): e for e in await _events(ledger, user)}
    event = events.get(str(changes[0]["transaction_id"]))
    assert event is None or event["type"] != "credits.clawed_back", (
        f"an expiry change went out as {event['type']}: {event['body']}"
    )


async def test_two_purchases_of_one_checkout_for_two_users_at_once(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """Two RecordPurchase calls naming the same purchase_id (a forged or misrouted session)
    for two different users, at once: one grants; the other must be answered (already
    recorded or a clear refusal), never INTERNAL, and nothing is granted twice.

    The interleaving is forced: the test holds the key each call's first-payment record
    needs (``paid_accounts`` of both users, inserted in an open transaction), so a call that
    has recorded its purchase row waits there, uncommitted. Without a lock on the purchase,
    both calls find no purchase row, both insert one, and the second fails on the first's
    key; with it, the second waits for the first to commit and then finds its row."""
    purchase = f"cs-{uuid.uuid4().hex[:12]}"
    users = [_user("buyer"), _user("buyer")]
    for user in users:
        await admin.ensure_account(user)
    requests = [
        bpb.RecordPurchaseRequest(
            request_id=f"evt-{uuid.uuid4().hex}",
            user_id=u,
            purchase_id=purchase,
            price_id="price_topup_100",
            credits_micros=100 * CREDIT,
            amount_paid_minor=499,
            currency="usd",
        )
        for u in users
    ]
    watch = await _connect(ledger)
    park = await _connect(ledger)
    try:
        await park.execute("BEGIN")
        await park.execute(
            "INSERT INTO paid_accounts (user_id, first_paid_at)"
            " SELECT u, now() FROM unnest($1::text[]) u",
            users,
        )
        calls = [asyncio.ensure_future(admin.billing.RecordPurchase(r)) for r in requests]
        await _waiting_on_locks(watch, 2)  # the first parked after its insert, the second behind
        await park.execute("ROLLBACK")
        answers = await asyncio.gather(*calls, return_exceptions=True)
    finally:
        await park.close()
        await watch.close()
    assert not any(isinstance(a, BaseException) for a in answers), answers
    granted = await _fetch(
        ledger, "SELECT user_id FROM credit_lots WHERE grant_key = $1", f"purchase:{purchase}"
    )
    assert len(granted) == 1
    first = users.index(granted[0]["user_id"])
    recorded = [a.already_recorded for a in answers if not isinstance(a, BaseException)]
    assert recorded == [i != first for i in range(2)], answers
    assert await _verify(admin, *users) == []


# ---------------------------------------------------------------------------------------------
# the gateway: a subscription checkout that also sells a one-off top-up


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stripe_api() -> AsyncIterator[tuple[Any, str]]:
    from tests import stripe_fakes as sf

    fake = sf.FakeStripe()
    fake.prices[sf.MONTHLY] = sf.price(sf.MONTHLY, 250, recurring=True)
    fake.prices[sf.TOP_UP_500] = sf.price(sf.TOP_UP_500, 500, recurring=False)
    runner, url = await sf.serve(fake.app())
    yield fake, url
    await runner.cleanup()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gateway(ledger: Ledger, stripe_api: tuple[Any, str]) -> AsyncIterator[Any]:
    import aiohttp

    from tests import stripe_fakes as sf

    config = sf.gateway_config(ledger.target, stripe_api[1], harness.TOKENS["billing"])
    runner, url = await sf.start_gateway(config)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        yield sf.Gateway(url, http)
    await runner.cleanup()


@pytest.mark.parametrize("invoice_first", [False, True])
async def test_a_subscription_checkout_with_a_one_off_item_grants_the_same_in_any_order(
    ledger: Ledger,
    admin: AsyncCreditWalletClient,
    gateway: Any,
    stripe_api: tuple[Any, str],
    invoice_first: bool,
) -> None:
    """FINDING: Stripe lets a subscription-mode checkout sell one-time prices too (they are
    invoice items on the first invoice). The checkout path adds every line item's credits
    to the *period's* allotment (250 + 500 as one subscription lot, which expires, and the
    subscription's period_credits becomes 750); invoice.paid grants only the subscription
    line (250) and ignores the invoice item. Whichever arrives first decides: checkout first
    gives 750 expiring subscription credits; invoice first gives 250 and the paid-for 500
    one-off credits are never granted. Expected in both orders: 250 subscription + 500
    top-up (or a refusal), the same whatever the order."""
    from tests import stripe_fakes as sf

    fake = stripe_api[0]
    start = int(ledger.clock.now().timestamp())
    end = start + 31 * 86_400
    user, sub_id, customer = _user("mixed"), sf.new_id("sub"), sf.new_id("cus")
    one_off = sf.proration_line(sub_id, start, start, price_id=sf.TOP_UP_500, amount=1999)
    one_off["parent"]["invoice_item_details"]["proration"] = False
    lines = [sf.period_line(sub_id, start, end, amount=999), one_off]
    inv = sf.invoice(
        sub_id,
        customer,
        start,
        end,
        payment=sf.new_id("pi"),
        paid=2998,
        billing_reason="subscription_create",
        lines=lines,
    )
    fake.invoices[inv["id"]] = inv
    fake.subscriptions[sub_id] = sf.subscription(
        sub_id, customer, "active", start, end, fake.prices[sf.MONTHLY]
    )
    session = sf.obj(
        "checkout.session",
        id=sf.new_id("cs"),
        mode="subscription",
        payment_status="paid",
        client_reference_id=user,
        customer=customer,
        subscription=sub_id,
        invoice=inv["id"],
        payment_intent=None,
        amount_subtotal=2998,
        amount_total=2998,
        currency="usd",
    )
    fake.line_items[session["id"]] = [
        sf.line_item(fake.prices[sf.MONTHLY]),
        sf.line_item(fake.prices[sf.TOP_UP_500]),
    ]
    inv["parent"]["subscription_details"]["metadata"] = {"user_id": user}
    bodies = [
        sf.event("checkout.session.completed", session, start + 1),
        sf.event("invoice.paid", inv, start + 2),
    ]
    if invoice_first:
        bodies.reverse()
    for body in bodies:
        response = await gateway.deliver(body)
        assert response.status == 200, await response.text()
    lots = {
        (r["source"], r["amount_micros"])
        for r in await _fetch(ledger, "SELECT * FROM credit_lots WHERE user_id = $1", user)
    }
    assert lots == {("subscription", 250 * CREDIT), ("top_up", 500 * CREDIT)}, (
        f"{lots}; VerifyLedger says {await _verify(admin, user)}"
    )


# ---------------------------------------------------------------------------------------------
# the rollover, twice at once and racing debits (a database of its own: it sweeps everything)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def quiet(base_dsn: str, data_dir: Path) -> AsyncIterator[Ledger]:
    running = await events_kit.start(
        base_dsn, data_dir, balance_low_default_micros=0, workers=False
    )
    yield running
    await running.close()


async def _expire_rows(ledger: Ledger) -> dict[tuple[str, str], list[int]]:
    rows = await _fetch(
        ledger,
        "SELECT user_id, metadata->>'lot_id' AS lot, amount_micros FROM credit_transactions "
        "WHERE type = 'expire' ORDER BY transaction_id",
    )
    found: dict[tuple[str, str], list[int]] = {}
    for r in rows:
        found.setdefault((r["user_id"], r["lot"]), []).append(-r["amount_micros"])
    return found


async def test_two_rollovers_at_once_and_debits_racing_them(quiet: Ledger) -> None:
    """HELD: two rollovers at once record each due lot's expiry once and each expired hold's
    release once, and their summaries add up to exactly that work; debits racing a third
    pair of rollovers on the same accounts leave VerifyLedger clean, one expire row per
    lot, and spend nothing expired."""
    admin = quiet.client("admin")
    agent = quiet.client("agent")
    clock = quiet.clock
    expires = clock.now() + dt.timedelta(hours=1)
    users = []
    for i in range(24):
        user = await _funded(admin, 3, source=pb.LOT_SOURCE_PROMO, expires_at=expires)
        await admin.grant(user, CREDIT, pb.LOT_SOURCE_TOP_UP)
        if i % 2:
            await admin.authorize(user, amount_micros=CREDIT, ttl_seconds=600)
        users.append(user)
    clock.set(expires + dt.timedelta(seconds=1))
    first, second = await asyncio.gather(admin.rollover(), admin.rollover())
    assert first.accounts_processed + second.accounts_processed == 24
    assert first.holds_released + second.holds_released == 12
    expired = await _expire_rows(quiet)
    assert all(len(v) == 1 for v in expired.values()), expired
    assert sum(v[0] for v in expired.values()) == 24 * 3 * CREDIT
    assert first.credits_expired_micros + second.credits_expired_micros == 24 * 3 * CREDIT
    assert await _verify(admin) == []

    later = clock.now() + dt.timedelta(hours=1)
    for user in users:
        await admin.grant(user, 2 * CREDIT, pb.LOT_SOURCE_PROMO, expires_at=later)
    clock.set(later + dt.timedelta(milliseconds=1))
    racing = [agent.debit(u, amount_micros=CREDIT // 2) for u in users]
    answers = await asyncio.gather(
        admin.rollover(), *racing[:12], admin.rollover(), *racing[12:], return_exceptions=True
    )
    assert not [a for a in answers if isinstance(a, BaseException)], answers
    for user in users:
        assert (await admin.get_balance(user)).available_micros == CREDIT // 2
    expired = await _expire_rows(quiet)
    assert all(len(v) == 1 for v in expired.values()), expired
    assert await _verify(admin) == []


async def test_refunding_a_period_whose_credits_expired_claws_back_only_what_was_spent(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """FINDING: a refund claws back the period's whole allotment even when most of it has
    already expired unused: the expired part is treated as spent, becomes debt, and is paid
    from the account's other live credits (here a top-up). Only what was spent (30 of 100)
    should become debt ("what was already spent becomes debt"); the user loses the 70
    expired credits twice, once by expiry and once from the top-up."""
    clock = ledger.clock
    anchor = clock.now().replace(microsecond=0) + dt.timedelta(days=200)
    p1_end, p2_end = _month(anchor, 1), _month(anchor, 2)
    user, sub = _user("refund-old"), f"sub_{uuid.uuid4().hex[:12]}"
    payment = f"pi_{uuid.uuid4().hex}"
    clock.set(anchor + dt.timedelta(minutes=1))
    await _paid(admin, sub, user, anchor, p1_end, 100, anchor, payment_id=payment)
    await admin.grant(user, 50 * CREDIT, pb.LOT_SOURCE_TOP_UP)
    await admin.debit(user, amount_micros=30 * CREDIT)  # from the subscription lot (expires first)
    clock.set(p2_end + dt.timedelta(days=1))  # the rest (70) expired at the end of P2
    assert (await admin.get_balance(user)).available_micros == 50 * CREDIT
    refund = await admin.billing.RecordRefund(
        bpb.RecordRefundRequest(
            request_id=f"evt-{uuid.uuid4().hex}", payment_id=payment, amount_refunded_minor=999
        )
    )
    balance = await admin.get_balance(user)
    assert (balance.available_micros, balance.debt_micros) == (20 * CREDIT, 0), (
        f"clawed back {refund.clawed_back_micros // CREDIT}: available "
        f"{balance.available_micros // CREDIT}, debt {balance.debt_micros // CREDIT}; "
        f"VerifyLedger says {await _verify(admin, user)}"
    )


async def test_a_subscription_lot_cut_short_while_a_hold_reserves_it(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """HELD: a hold reserved 60 of a subscription lot whose expiry an anchor reset then moves
    to now: the unreserved 40 expire at once; the capture spends 20 of the hold (the hold's
    credits) and the 40 it gives back expire at once; the new period's lot is untouched."""
    clock = ledger.clock
    anchor = clock.now().replace(microsecond=0) + dt.timedelta(days=300)
    p1_end = _month(anchor, 1)
    user, sub = _user("cut-hold"), f"sub_{uuid.uuid4().hex[:12]}"
    clock.set(anchor + dt.timedelta(minutes=1))
    await _paid(admin, sub, user, anchor, p1_end, 100, anchor)
    clock.set(p1_end + dt.timedelta(days=10))
    hold = await admin.authorize(user, amount_micros=60 * CREDIT, ttl_seconds=3600)
    clock.advance(minutes=1)
    reset = p1_end + dt.timedelta(days=5)
    await _paid(admin, sub, user, p1_end, reset, 100, reset)  # P1's lot now ends now
    clock.advance(minutes=1)
    captured = await admin.capture(user, hold.hold_id, amount_micros=20 * CREDIT)
    assert captured.available_micros == 100 * CREDIT  # only the new period's lot
    balance = await admin.get_balance(user)
    assert (balance.available_micros, balance.held_micros) == (100 * CREDIT, 0)
    assert await _verify(admin, user) == []


async def test_a_refund_racing_its_purchase_and_debits_claws_back_once(
    ledger: Ledger, admin: AsyncCreditWalletClient, agent: AsyncCreditWalletClient
) -> None:
    """HELD: a partial refund, its retry under another event id, the purchase itself and
    debits, all at once: the clawback is applied once, to its target, whatever the order."""
    racers = []
    for _ in range(3):
        user = _user("race-refund")
        racers.append(user)
        await admin.ensure_account(user)  # 5 trial credits
        payment = f"pi-{uuid.uuid4().hex}"
        buy = admin.billing.RecordPurchase(
            bpb.RecordPurchaseRequest(
                request_id=f"evt-{uuid.uuid4().hex}",
                user_id=user,
                purchase_id=f"cs-{user}",
                payment_id=payment,
                customer_id=f"cus-{user}",
                price_id="price_topup_100",
                credits_micros=100 * CREDIT,
                amount_paid_minor=1000,
                currency="usd",
            )
        )
        refunds = [
            admin.billing.RecordRefund(
                bpb.RecordRefundRequest(
                    request_id=f"evt-{uuid.uuid4().hex}",
                    payment_id=payment,
                    amount_refunded_minor=250,
                )
            )
            for _ in range(3)
        ]
        spend = [agent.debit(user, amount_micros=CREDIT) for _ in range(4)]
        answers = await asyncio.gather(*refunds, buy, *spend, return_exceptions=True)
        failures = [a for a in answers if isinstance(a, BaseException)]
        assert all(isinstance(a, cw.InsufficientCredits) for a in failures), failures
        # Whoever came second (a refund, or the purchase finding its early refund) clawed.
        clawbacks = [r for r in await _history(ledger, user) if r["type"] == "clawback"]
        assert [-r["amount_micros"] for r in clawbacks] == [25 * CREDIT]
        debited = 4 - len(failures)
        assert (await admin.get_balance(user)).available_micros == (105 - 25 - debited) * CREDIT
    assert await _verify(admin, *racers) == []


# ---------------------------------------------------------------------------------------------
# events: rolled-back work leaves none; every committed row has exactly its event


async def test_a_stored_refusal_keeps_no_event_of_the_expiry_it_rolled_back(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """HELD: an Authorize refused after its lock recorded a due expiry rolls that expiry
    back with its savepoint, trigger-written event included; the next write records the
    expiry once, with its one event, and the refusal replays as stored."""
    clock = ledger.clock
    expires = clock.now() + dt.timedelta(hours=1)
    user = await _funded(admin, 3, source=pb.LOT_SOURCE_PROMO, expires_at=expires)
    await admin.grant(user, CREDIT, pb.LOT_SOURCE_TOP_UP)
    clock.set(expires + dt.timedelta(seconds=1))
    for _ in range(2):
        with pytest.raises(cw.InsufficientCredits):
            await admin.authorize(user, amount_micros=2 * CREDIT, request_id="too-much")
    types = [e["type"] for e in await _events(ledger, user)]
    assert "credits.expired" not in types
    assert [r["type"] for r in await _history(ledger, user)].count("expire") == 0
    assert (await admin.get_balance(user)).available_micros == CREDIT
    types = [e["type"] for e in await _events(ledger, user)]
    assert types.count("credits.expired") == 1
    assert [r["type"] for r in await _history(ledger, user)].count("expire") == 1


async def test_every_committed_row_of_this_module_has_exactly_its_event(ledger: Ledger) -> None:
    """HELD (run last, over everything above: batches aborted and rerun, refusals, replays,
    cancellations, expiries, subscriptions): one credits.* event per history row (grants
    excepted), one credits.granted per lot, one hold.created per hold, one hold.<end> per
    finalized hold, and per account sequence numbers 1..n without a gap."""
    missing = await _fetch(
        ledger,
        """
        WITH expected AS (
            SELECT user_id, 'tx:' || transaction_id AS k FROM credit_transactions
            WHERE type <> 'grant'
            UNION ALL SELECT user_id, 'lot:' || lot_id FROM credit_lots
            UNION ALL SELECT user_id, 'hold:' || hold_id FROM holds
            UNION ALL SELECT user_id, 'end:' || hold_id FROM holds WHERE status <> 'pending'
        ), seen AS (
            SELECT user_id, CASE
                WHEN type LIKE 'credits.%' AND type NOT IN ('credits.granted', 'credits.expiring')
                    THEN 'tx:' || (body->>'transaction_id')
                WHEN type = 'credits.granted' THEN 'lot:' || (body->>'lot_id')
                WHEN type = 'hold.created' THEN 'hold:' || (body->>'hold_id')
                WHEN type LIKE 'hold.%' THEN 'end:' || (body->>'hold_id')
            END AS k
            FROM events WHERE type LIKE 'credits.%' OR type LIKE 'hold.%'
        )
        (SELECT 'no event' AS what, * FROM expected EXCEPT ALL SELECT 'no event', * FROM seen)
        UNION ALL
        (SELECT 'extra event', * FROM seen WHERE k IS NOT NULL
         EXCEPT ALL SELECT 'extra event', * FROM expected)
        """,
    )
    assert missing == [], missing[:10]
    gaps = await _fetch(
        ledger,
        "SELECT user_id, count(*) AS n, max(seq) AS top FROM events GROUP BY user_id "
        "HAVING count(*) <> max(seq) OR min(seq) <> 1",
    )
    assert gaps == []
