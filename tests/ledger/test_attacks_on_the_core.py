"""An attacker's tests of the ledger core: one group-commit batch holding duplicated keys or a bad
debit, callers that go away mid-batch, replays that must answer what was first answered, a clock
stepping back, holds and lots at the exact instant, and random walks whose every reply is what
the next read shows. The batcher's two in-flight batches are parked on a locked "plug" account
so the debits that follow form one batch.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from creditwallet.client import errors as cw
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.server import metrics
from creditwallet.v1 import admin_service_pb2 as apb
from creditwallet.v1 import billing_service_pb2 as bpb
from creditwallet.v1 import common_pb2 as pb
from creditwallet.v1 import wallet_service_pb2 as wpb
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests import attack_kit, harness
from tests.attack_kit import (
    CREDIT,
    UTC,
    OneBatch,
    _alerts,
    _connect,
    _events,
    _fetch,
    _funded,
    _history,
    _hold_account,
    _release,
    _set_alert,
    _user,
    _verify,
    every_row_has_its_event,
)
from tests.billing.paid import ts
from tests.harness import Ledger


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def ledger(base_dsn: str, data_dir: Path) -> AsyncIterator[Ledger]:
    running = await attack_kit.start(base_dsn, data_dir)
    yield running
    await running.close()


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
        await harness.waiting_on_locks(watch, 2)
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
            expires_at=ts(clock.now() + dt.timedelta(days=9)),
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
            event_created_at=ts(clock.now()),
        ),
    )
    await _same_on_replay(
        billing.RecordPaymentFailure,
        bpb.RecordPaymentFailureRequest(
            request_id=f"evt-f-{user}",
            subscription_id=f"sub-{user}",
            customer_id=f"cus-x-{user}",
            invoice_id=f"in-{user}",
            event_created_at=ts(clock.now()),
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


async def test_every_committed_row_of_this_module_has_exactly_its_event(ledger: Ledger) -> None:
    """HELD (run last, over everything above: batches aborted and rerun, refusals, replays,
    cancellations, expiries)."""
    await every_row_has_its_event(ledger)
