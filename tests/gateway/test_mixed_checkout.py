"""A subscription checkout that also sells a one-off top-up, through the real gateway.

The period grants its subscription credits; the one-off item grants a top-up purchase keyed
by the invoice, once, whichever of the checkout and ``invoice.paid`` arrives first and
however often each is redelivered. A refund of the invoice's payment claws back the
refunded fraction of both grants.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest
import pytest_asyncio
from creditwallet.client.wallet import AsyncCreditWalletClient

from tests import harness
from tests import stripe_fakes as sf
from tests.harness import Ledger

pytestmark = pytest.mark.usefixtures("verified")

CREDIT = 1_000_000


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
    runner, gateway_url = await sf.start_gateway(config)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        yield sf.Gateway(gateway_url, http)
    await runner.cleanup()


def _mixed(fake: sf.FakeStripe, start: int) -> tuple[str, bytes, bytes, str]:
    """(user, checkout event, invoice.paid event, payment intent) of one mixed checkout."""
    end = start + 31 * 86_400
    user, sub_id, customer = f"mixed-{harness.new_user()}", sf.new_id("sub"), sf.new_id("cus")
    payment = sf.new_id("pi")
    one_off = sf.proration_line(sub_id, start, start, price_id=sf.TOP_UP_500, amount=1999)
    one_off["parent"]["invoice_item_details"]["proration"] = False
    lines = [sf.period_line(sub_id, start, end, amount=999), one_off]
    inv = sf.invoice(
        sub_id,
        customer,
        start,
        end,
        payment=payment,
        paid=2998,
        billing_reason="subscription_create",
        lines=lines,
    )
    inv["parent"]["subscription_details"]["metadata"] = {"user_id": user}
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
    checkout = sf.event("checkout.session.completed", session, start + 1)
    paid = sf.event("invoice.paid", inv, start + 2)
    return user, checkout, paid, payment


async def _lots(ledger: Ledger, user: str) -> list[tuple[str, int, int]]:
    conn = await asyncpg.connect(ledger.dsn)
    try:
        rows = await conn.fetch(
            "SELECT source, amount_micros, remaining_micros FROM credit_lots WHERE user_id = $1"
            " ORDER BY source",
            user,
        )
    finally:
        await conn.close()
    return [
        (r["source"], r["amount_micros"] // CREDIT, r["remaining_micros"] // CREDIT) for r in rows
    ]


async def _deliver(gateway: sf.Gateway, body: bytes) -> dict[str, Any]:
    response = await gateway.deliver(body)
    assert response.status == 200, await response.text()
    answer: dict[str, Any] = await response.json()
    return answer


@pytest.mark.parametrize("order", list(itertools.permutations(["checkout", "paid", "again"])))
async def test_every_order_and_redelivery_grants_the_period_and_the_one_off_once(
    ledger: Ledger,
    gateway: sf.Gateway,
    stripe_api: tuple[sf.FakeStripe, str],
    order: tuple[str, ...],
) -> None:
    """'again' redelivers whichever of the two events came first."""
    user, checkout, paid, _ = _mixed(stripe_api[0], int(ledger.clock.now().timestamp()))
    sent: list[bytes] = []
    for step in order:
        body = {"checkout": checkout, "paid": paid}.get(step) or (sent[0] if sent else paid)
        sent.append(body)
        await _deliver(gateway, body)
    if checkout not in sent:
        await _deliver(gateway, checkout)
    if paid not in sent:
        await _deliver(gateway, paid)
    assert await _lots(ledger, user) == [("subscription", 250, 250), ("top_up", 500, 500)]


async def test_a_refund_of_the_invoice_claws_back_both_grants(
    ledger: Ledger,
    admin: AsyncCreditWalletClient,
    gateway: sf.Gateway,
    stripe_api: tuple[sf.FakeStripe, str],
) -> None:
    start = int(ledger.clock.now().timestamp())
    user, checkout, paid, payment = _mixed(stripe_api[0], start)
    await _deliver(gateway, paid)
    await _deliver(gateway, checkout)
    charge = sf.obj(
        "charge",
        id=sf.new_id("ch"),
        payment_intent=payment,
        amount=2998,
        amount_refunded=1499,
        refunds={"data": [{"id": sf.new_id("re")}]},
    )
    answer = await _deliver(gateway, sf.event("charge.refunded", charge, start + 3))
    assert int(answer["result"]["clawedBackMicros"]) == 125 * CREDIT + 250 * CREDIT
    assert await _lots(ledger, user) == [("subscription", 250, 125), ("top_up", 500, 250)]
    charge["amount_refunded"] = 2998
    await _deliver(gateway, sf.event("charge.refunded", charge, start + 4))
    assert await _lots(ledger, user) == [("subscription", 250, 0), ("top_up", 500, 0)]
    assert (await admin.get_balance(user)).available_micros == 0
