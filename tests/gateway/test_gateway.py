"""The real gateway in front of the real ledger, with Stripe's API served locally.

Deliveries are signed as Stripe signs them; objects come from Stripe's published fixtures.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import socket
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from creditwallet.client import errors as cw
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.server import app as server_app
from creditwallet.v1 import billing_service_pb2 as bpb
from creditwallet.v1 import common_pb2 as pb

from tests import harness
from tests import stripe_fakes as sf
from tests.harness import Ledger, new_user

pytestmark = pytest.mark.usefixtures("verified")

CREDIT = 1_000_000
DAY = 86_400


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stripe_api() -> AsyncIterator[tuple[sf.FakeStripe, str]]:
    fake = sf.FakeStripe()
    fake.prices[sf.MONTHLY] = sf.price(sf.MONTHLY, 250, recurring=True)
    fake.prices[sf.TOP_UP_500] = sf.price(sf.TOP_UP_500, 500, recurring=False)
    runner, url = await sf.serve(fake.app())
    yield fake, url
    await runner.cleanup()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gateway(
    ledger: Ledger, stripe_api: tuple[sf.FakeStripe, str]
) -> AsyncIterator[sf.Gateway]:
    config = sf.gateway_config(ledger.target, stripe_api[1], harness.TOKENS["billing"])
    runner, url = await sf.start_gateway(config)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        yield sf.Gateway(url, http)
    await runner.cleanup()


@pytest.fixture
def fake(stripe_api: tuple[sf.FakeStripe, str]) -> sf.FakeStripe:
    return stripe_api[0]


def top_up_session(fake: sf.FakeStripe, user: str, price_id: str = sf.TOP_UP_500) -> dict[str, Any]:
    session = sf.obj(
        "checkout.session",
        id=sf.new_id("cs"),
        mode="payment",
        payment_status="paid",
        client_reference_id=user,
        customer=sf.new_id("cus"),
        payment_intent=sf.new_id("pi"),
        amount_subtotal=1999,
        amount_total=1999,
        currency="usd",
        subscription=None,
        invoice=None,
    )
    fake.line_items[session["id"]] = [sf.line_item(fake.prices[price_id])]
    return session


async def available(admin: AsyncCreditWalletClient, user: str) -> int:
    return (await admin.get_balance(user)).available_micros


async def grants(admin: AsyncCreditWalletClient, user: str) -> list[tuple[int, int]]:
    page = await admin.list_transactions(user, page_size=100)
    return [
        (t.source, t.amount_micros)
        for t in page.transactions
        if t.type == pb.TRANSACTION_TYPE_GRANT
    ]


async def test_top_up_grants_once_whatever_the_deliveries(
    gateway: sf.Gateway, fake: sf.FakeStripe, admin: AsyncCreditWalletClient
) -> None:
    user = new_user()
    session = top_up_session(fake, user)
    body = sf.event("checkout.session.completed", session, int(time.time()))
    first = await asyncio.gather(*(gateway.deliver(body) for _ in range(5)))
    assert [r.status for r in first] == [200] * 5
    for _ in range(5):
        assert (await gateway.deliver(body)).status == 200
    # Another event for the same session (async payment) grants nothing more.
    again = sf.event("checkout.session.async_payment_succeeded", session, int(time.time()))
    assert (await gateway.deliver(again, secret=sf.SECRETS[1])).status == 200
    assert await grants(admin, user) == [(pb.LOT_SOURCE_TOP_UP, 500 * CREDIT)]
    assert await available(admin, user) == 500 * CREDIT


async def test_bad_deliveries_are_refused_and_change_nothing(
    gateway: sf.Gateway, fake: sf.FakeStripe, admin: AsyncCreditWalletClient
) -> None:
    user = new_user()
    body = sf.event("checkout.session.completed", top_up_session(fake, user), int(time.time()))
    now = int(time.time())
    assert (await gateway.deliver(body, secret="whsec_forged")).status == 400
    # More than 300 s off (by a margin: the second may turn between here and the check).
    assert (await gateway.deliver(body, at=now - 305)).status == 400
    assert (await gateway.deliver(body, at=now + 305)).status == 400
    assert (await gateway.deliver(body.replace(b'"id"', b'"i\xff"', 1))).status == 400
    assert (await gateway.deliver(b'{"id": "evt_1", "type": ')).status == 400
    assert (await gateway.deliver(b'["not", "an", "event"]')).status == 400
    huge = body[:-1] + b', "pad": "' + b"x" * (1024 * 1024) + b'"}'
    assert (await gateway.deliver(huge)).status == 413
    unsigned = await gateway.http.post(gateway.url + "/stripe/webhook", data=body)
    assert unsigned.status == 400
    with pytest.raises(cw.AccountNotFound):
        await admin.get_balance(user)
    ignored = sf.event("customer.created", sf.obj("customer"), now)
    assert (await gateway.deliver(ignored)).status == 200


async def test_subscription_first_period_grants_once_in_every_order(
    gateway: sf.Gateway, fake: sf.FakeStripe, admin: AsyncCreditWalletClient, ledger: Ledger
) -> None:
    start = int(ledger.clock.now().timestamp()) - DAY
    end = start + 31 * DAY
    plan = fake.prices[sf.MONTHLY]
    for order in itertools.permutations(range(4)):
        user, sub_id, customer = new_user(), sf.new_id("sub"), sf.new_id("cus")
        inv = sf.invoice(sub_id, customer, start, end, payment=sf.new_id("pi"))
        fake.invoices[inv["id"]] = inv
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
            amount_total=999,
            currency="usd",
        )
        fake.line_items[session["id"]] = [sf.line_item(plan)]
        # In Stripe's order: created (incomplete), invoice.paid, updated (active), checkout.
        bodies = [
            sf.event(
                "customer.subscription.created",
                sf.subscription(sub_id, customer, "incomplete", start, end, plan),
                start,
            ),
            sf.event("invoice.paid", inv, start + 1),
            sf.event(
                "customer.subscription.updated",
                sf.subscription(sub_id, customer, "active", start, end, plan),
                start + 2,
            ),
            sf.event("checkout.session.completed", session, start + 3),
        ]
        for index in order:
            response = await gateway.deliver(bodies[index])
            assert response.status == 200, (order, index)
        assert await grants(admin, user) == [(pb.LOT_SOURCE_SUBSCRIPTION, 250 * CREDIT)], order
        balance = await admin.get_balance(user)
        assert balance.subscription.subscription_id == sub_id
        assert balance.subscription.status == pb.SUBSCRIPTION_STATUS_ACTIVE, order
        assert balance.subscription.current_period_start.seconds == start
        assert balance.subscription.period_credits_micros == 250 * CREDIT


async def test_renewals_failures_and_stale_updates(
    gateway: sf.Gateway, fake: sf.FakeStripe, admin: AsyncCreditWalletClient, ledger: Ledger
) -> None:
    user, sub_id, customer = new_user(), sf.new_id("sub"), sf.new_id("cus")
    plan = fake.prices[sf.MONTHLY]
    p1 = int(ledger.clock.now().timestamp()) - DAY
    p2, p3 = p1 + 31 * DAY, p1 + 59 * DAY
    first = sf.invoice(sub_id, customer, p1, p2, payment=sf.new_id("pi"))
    fake.invoices[first["id"]] = first
    session = sf.obj(
        "checkout.session",
        id=sf.new_id("cs"),
        mode="subscription",
        payment_status="paid",
        client_reference_id=user,
        customer=customer,
        subscription=sub_id,
        invoice=first["id"],
        currency="usd",
    )
    fake.line_items[session["id"]] = [sf.line_item(plan)]
    assert (
        await gateway.deliver(sf.event("checkout.session.completed", session, p1))
    ).status == 200
    renewal = sf.invoice(sub_id, customer, p2, p3, payment=sf.new_id("pi"))
    assert (await gateway.deliver(sf.event("invoice.paid", renewal, p2))).status == 200
    assert (await gateway.deliver(sf.event("invoice.paid", renewal, p2 + 5))).status == 200
    assert len(await grants(admin, user)) == 2
    # The next renewal fails: past_due, and no grant.
    failed = sf.invoice(sub_id, customer, p3, p3 + 30 * DAY, payment=sf.new_id("pi"), paid=0)
    assert (await gateway.deliver(sf.event("invoice.payment_failed", failed, p3))).status == 200
    balance = await admin.get_balance(user)
    assert balance.subscription.status == pb.SUBSCRIPTION_STATUS_PAST_DUE
    # An older "active" update delivered late does not win.
    stale = sf.subscription(sub_id, customer, "active", p2, p3, plan)
    assert (
        await gateway.deliver(sf.event("customer.subscription.updated", stale, p2 + 60))
    ).status == 200
    balance = await admin.get_balance(user)
    assert balance.subscription.status == pb.SUBSCRIPTION_STATUS_PAST_DUE
    assert balance.available_micros == 500 * CREDIT
    assert len(await grants(admin, user)) == 2


async def test_refunds_claw_back_proportionally_and_spent_credits_become_debt(
    gateway: sf.Gateway, fake: sf.FakeStripe, admin: AsyncCreditWalletClient
) -> None:
    user = new_user()
    session = top_up_session(fake, user)
    assert (await gateway.deliver(sf.event("checkout.session.completed", session, 1))).status == 200
    charge = sf.obj("charge", id=sf.new_id("ch"), payment_intent=session["payment_intent"])
    charge.update(amount=1999, refunds={"object": "list", "data": []})
    # Partial refund: $10.00 of $19.99.
    partial = 500 * CREDIT * 1000 // 1999
    charge["amount_refunded"] = 1000
    assert (await gateway.deliver(sf.event("charge.refunded", charge, 10))).status == 200
    assert await available(admin, user) == 500 * CREDIT - partial
    # An older event with a smaller cumulative amount changes nothing.
    older = dict(charge, amount_refunded=500)
    assert (await gateway.deliver(sf.event("charge.refunded", older, 5))).status == 200
    assert await available(admin, user) == 500 * CREDIT - partial
    # Spend most of what is left, then the rest is refunded: the spent part becomes debt.
    await admin.debit(user, amount_micros=200 * CREDIT)
    charge["amount_refunded"] = 1999
    assert (await gateway.deliver(sf.event("charge.refunded", charge, 20))).status == 200
    balance = await admin.get_balance(user)
    # Available is negative exactly by the recorded debt (invariant 1).
    assert (balance.available_micros, balance.debt_micros) == (-200 * CREDIT, 200 * CREDIT)
    with pytest.raises(cw.AccountInDebt):
        await admin.debit(user, amount_micros=1)
    # A later purchase pays the debt first.
    again = top_up_session(fake, user)
    assert (await gateway.deliver(sf.event("checkout.session.completed", again, 30))).status == 200
    balance = await admin.get_balance(user)
    assert (balance.debt_micros, balance.available_micros) == (0, 300 * CREDIT)
    await admin.debit(user, amount_micros=CREDIT)
    page = await admin.list_transactions(user, page_size=100)
    clawed = [t.amount_micros for t in page.transactions if t.type == pb.TRANSACTION_TYPE_CLAWBACK]
    assert sorted(clawed) == sorted([-partial, -(500 * CREDIT - partial)])


async def test_refund_before_its_purchase_claws_back_on_arrival(
    gateway: sf.Gateway, fake: sf.FakeStripe, admin: AsyncCreditWalletClient
) -> None:
    user = new_user()
    session = top_up_session(fake, user)
    charge = sf.obj("charge", id=sf.new_id("ch"), payment_intent=session["payment_intent"])
    charge.update(amount=1999, amount_refunded=1999)
    assert (await gateway.deliver(sf.event("charge.refunded", charge, 10))).status == 200
    assert (await gateway.deliver(sf.event("checkout.session.completed", session, 1))).status == 200
    balance = await admin.get_balance(user)
    assert (balance.available_micros, balance.debt_micros) == (0, 0)


async def test_price_disagreement_and_missing_price_refuse_with_5xx(
    gateway: sf.Gateway, fake: sf.FakeStripe, admin: AsyncCreditWalletClient
) -> None:
    user = new_user()
    wrong = sf.price(sf.TOP_UP_500, 400, recurring=False)
    session = top_up_session(fake, user)
    fake.line_items[session["id"]] = [sf.line_item(wrong)]
    body = sf.event("checkout.session.completed", session, 1)
    assert (await gateway.deliver(body)).status == 500
    # Stripe's API down: the catalog answers alone (the session names its price).
    fake.down = True
    try:
        session2 = dict(top_up_session(fake, user), metadata={"price_id": sf.TOP_UP_500})
        assert (
            await gateway.deliver(sf.event("checkout.session.completed", session2, 2))
        ).status == 200
    finally:
        fake.down = False
    assert await available(admin, user) == 500 * CREDIT


async def test_ledger_down_gives_5xx_then_the_retry_applies_once(
    ledger: Ledger, stripe_api: tuple[sf.FakeStripe, str], admin: AsyncCreditWalletClient
) -> None:
    fake, stripe_url = stripe_api
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = sf.gateway_config(f"127.0.0.1:{port}", stripe_url, harness.TOKENS["billing"])
    runner, url = await sf.start_gateway(config)
    user = new_user()
    body = sf.event("checkout.session.completed", top_up_session(fake, user), 1)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
            gw = sf.Gateway(url, http)
            assert (await gw.deliver(body)).status == 503
            async with http.get(url + "/healthz") as health:
                assert health.status == 503
            backup = await server_app.start(
                harness.config(Path(tempfile.gettempdir())),
                dsn=ledger.dsn,
                clock=ledger.clock,
                address=f"127.0.0.1:{port}",
            )
            try:
                statuses = [(await gw.deliver(body)).status for _ in range(2)]
                for _ in range(50):  # the channel reconnects with a short backoff
                    if statuses[-1] == 200:
                        break
                    await asyncio.sleep(0.1)
                    statuses.append((await gw.deliver(body)).status)
                assert statuses[-1] == 200
                assert (await gw.deliver(body)).status == 200
            finally:
                await backup.stop(grace_seconds=1.0)
    finally:
        await runner.cleanup()
    assert await available(admin, user) == 500 * CREDIT


async def test_rollover_endpoint_and_health(gateway: sf.Gateway, ledger: Ledger) -> None:
    url = gateway.url
    async with gateway.http.post(url + "/rollover") as denied:
        assert denied.status == 401
        assert (await denied.json())["reason"] == "send Authorization: Bearer $CRON_SECRET"
    headers = {"Authorization": "Bearer " + sf.CRON_SECRET}
    async with gateway.http.post(url + "/rollover", headers=headers) as ok:
        assert ok.status == 200
        summary = await ok.json()
        assert summary["period"] == ledger.clock.now().strftime("%Y-%m")
        # The protobuf JSON mapping, as the CLI's --json: camelCase, int64 as strings.
        assert set(summary) == {
            "period",
            "accountsProcessed",
            "creditsCarriedMicros",
            "creditsExpiredMicros",
            "holdsReleased",
            "chunks",
            "periodsSettled",
            "accountsCapped",
            "creditsCappedMicros",
        }
        assert all(isinstance(value, str) for value in summary.values())
    async with gateway.http.post(url + "/rollover?period=2999-01", headers=headers) as future:
        assert future.status == 400
    async with gateway.http.get(url + "/healthz") as health:
        assert health.status == 200
    async with gateway.http.get(url + "/metrics") as metrics:
        text = await metrics.text()
        assert "gateway_webhook_events_total" in text


async def test_billing_rpcs_refuse_malformed_requests(ledger: Ledger) -> None:
    billing = ledger.client("billing")
    with pytest.raises(cw.InvalidArgument):
        await billing.billing.RecordPurchase(
            bpb.RecordPurchaseRequest(request_id="r1", user_id=new_user(), purchase_id="cs_1")
        )
    with pytest.raises(cw.InvalidArgument):
        await billing.rollover("2026-13")


async def test_subscription_refund_finds_its_period_through_stripes_invoice_payments(
    gateway: sf.Gateway, fake: sf.FakeStripe, admin: AsyncCreditWalletClient, ledger: Ledger
) -> None:
    """A current-API invoice.paid names no payment; the gateway asks Stripe for it, so a
    refund of that payment claws the period's credits back (review finding)."""
    user, sub_id, customer = new_user(), sf.new_id("sub"), sf.new_id("cus")
    await admin.ensure_account(user)
    start = int(ledger.clock.now().timestamp()) - DAY
    payment = sf.new_id("pi")
    known = sf.invoice(sub_id, customer, start, start + 30 * DAY, payment=payment)
    fake.invoices[known["id"]] = known
    in_event = dict(known)
    del in_event["payments"]
    in_event["parent"] = {
        "type": "subscription_details",
        "subscription_details": {"subscription": sub_id, "metadata": {"user_id": user}},
    }
    assert (await gateway.deliver(sf.event("invoice.paid", in_event, start))).status == 200
    assert await available(admin, user) == 255 * CREDIT
    charge = sf.obj("charge", id=sf.new_id("ch"), payment_intent=payment)
    charge.update(amount=999, amount_refunded=999, refunds={"object": "list", "data": []})
    assert (await gateway.deliver(sf.event("charge.refunded", charge, start + 60))).status == 200
    assert await available(admin, user) == 5 * CREDIT


async def test_refusals_say_why_in_the_body(
    gateway: sf.Gateway, fake: sf.FakeStripe, admin: AsyncCreditWalletClient
) -> None:
    user = new_user()
    # A checkout whose line items Stripe cannot give and which names no price_id.
    session = top_up_session(fake, user)
    del fake.line_items[session["id"]]
    body = sf.event("checkout.session.completed", session, int(time.time()))
    headers = {"Stripe-Signature": sf.sign(body), "Content-Type": "application/json"}
    async with gateway.http.post(gateway.url + "/stripe/webhook", data=body, headers=headers) as r:
        assert r.status == 500
        answer = await r.json()
    assert answer["error"] == "price credits unknown or disputed"
    assert "metadata.price_id" in answer["reason"]
    # Naming the price, as a locally sent checkout does, is enough.
    session["metadata"] = {"price_id": sf.TOP_UP_500}
    named = sf.event("checkout.session.completed", session, int(time.time()))
    assert (await gateway.deliver(named)).status == 200
    assert await available(admin, user) == 500 * CREDIT
    # A forged signature is refused with its reason too.
    forged = {"Stripe-Signature": sf.sign(body, "whsec_forged"), "Content-Type": "application/json"}
    async with gateway.http.post(gateway.url + "/stripe/webhook", data=body, headers=forged) as r:
        assert r.status == 400
        assert "STRIPE_WEBHOOK_SECRET" in (await r.json())["reason"]


async def test_dev_webhook_top_up_is_signed_as_stripe_signs(
    gateway: sf.Gateway, admin: AsyncCreditWalletClient, capsys: pytest.CaptureFixture[str]
) -> None:
    from creditwallet.client.cli import main

    user = new_user()
    argv = ["dev", "webhook", "top-up", user, "--url", gateway.url + "/stripe/webhook"]
    argv += ["--secret", sf.SECRETS[1]]  # the second secret of a rotation is accepted too
    assert await asyncio.to_thread(main, [*argv, "--price", "price_cw_topup_100"]) == 0
    assert re.search(r"granted\s+100 credits", capsys.readouterr().out)
    assert await available(admin, user) == 100 * CREDIT
    assert await asyncio.to_thread(main, [*argv, "--price", "price_unknown"]) == 1
    assert "gateway answered 500: price 'price_unknown'" in capsys.readouterr().err
    wrong = [*argv[:-1], "whsec_wrong", "--price", "price_cw_topup_100"]
    assert await asyncio.to_thread(main, wrong) == 1
    assert "gateway answered 400" in capsys.readouterr().err
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}/stripe/webhook"
    unreachable = ["dev", "webhook", "top-up", user, "--url", closed, "--secret", "s"]
    assert await asyncio.to_thread(main, [*unreachable, "--price", "p"]) == 3
    assert await available(admin, user) == 100 * CREDIT
