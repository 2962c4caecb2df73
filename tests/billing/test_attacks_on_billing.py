"""An attacker's tests of subscriptions and payments: holds across a downgrade renewal, period ends
learnt at the instant of a debit, one purchase id for two users at once, a subscription checkout
that also sells a one-off top-up, two rollovers at once racing debits, refunds after expiry and
racing their purchase.
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
from creditwallet.v1 import billing_service_pb2 as bpb
from creditwallet.v1 import common_pb2 as pb

from tests import attack_kit, events_kit, harness
from tests.attack_kit import (
    CREDIT,
    _connect,
    _fetch,
    _funded,
    _history,
    _month,
    _user,
    _verify,
    every_row_has_its_event,
)
from tests.billing.paid import paid
from tests.harness import Ledger


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def ledger(base_dsn: str, data_dir: Path) -> AsyncIterator[Ledger]:
    running = await attack_kit.start(base_dsn, data_dir)
    yield running
    await running.close()


# ---------------------------------------------------------------------------------------------
# subscription periods


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
    await paid(admin, sub, user, anchor, p1_end, 1000, anchor)
    clock.set(p1_end - dt.timedelta(hours=1))
    hold = await admin.authorize(user, amount_micros=900 * CREDIT, ttl_seconds=24 * 3600)
    clock.set(p1_end + dt.timedelta(minutes=1))
    await paid(admin, sub, user, p1_end, p2_end, 100, anchor)  # the downgraded renewal
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
    await paid(admin, sub, user, anchor, p1_end, 100, anchor)
    clock.set(p1_end + dt.timedelta(days=10))
    await admin.debit(user, amount_micros=10 * CREDIT)
    # Same instant: the successor period [p1_end, p1_end + 5 days) on a reset anchor.
    reset = p1_end + dt.timedelta(days=5)
    await paid(admin, sub, user, p1_end, reset, 100, reset)
    history = await _history(ledger, user)
    assert [r["type"] for r in history][-1] == "expire"  # 90 left of the cut lot: expired
    assert await _verify(admin, user) == []


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
        await harness.waiting_on_locks(
            watch, 2
        )  # the first parked after its insert, the second behind
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
    await paid(admin, sub, user, anchor, p1_end, 100, anchor, payment_id=payment)
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
    await paid(admin, sub, user, anchor, p1_end, 100, anchor)
    clock.set(p1_end + dt.timedelta(days=10))
    hold = await admin.authorize(user, amount_micros=60 * CREDIT, ttl_seconds=3600)
    clock.advance(minutes=1)
    reset = p1_end + dt.timedelta(days=5)
    await paid(admin, sub, user, p1_end, reset, 100, reset)  # P1's lot now ends now
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


async def test_every_committed_row_of_this_module_has_exactly_its_event(ledger: Ledger) -> None:
    """HELD (run last, over everything above: subscriptions, purchases, refunds, rollovers)."""
    await every_row_has_its_event(ledger)
