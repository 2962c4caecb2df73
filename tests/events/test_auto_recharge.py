"""Auto-recharge end to end: real server, real gateway, the local fake Stripe API.

The fake checks idempotency keys as Stripe does and records every charge; credits come only
from ``payment_intent.succeeded`` delivered through the gateway, signed as Stripe signs.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import pytest_asyncio
from creditwallet.client import errors as cw
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.core.settings import Secret
from creditwallet.v1 import billing_service_pb2 as bpb
from creditwallet.v1 import events_pb2 as epb

from tests import events_kit, harness
from tests import stripe_fakes as sf
from tests.harness import new_user

CREDIT = 1_000_000
RECHARGE = "price_cw_recharge_100"
PRICE_CENTS = 499


@dataclasses.dataclass
class World:
    ledger: harness.Ledger
    fake: sf.FakeStripe
    gateway: sf.Gateway
    admin: AsyncCreditWalletClient


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def world(base_dsn: str, data_dir: Path) -> AsyncIterator[World]:
    fake = sf.FakeStripe()
    recharge_price = sf.price(RECHARGE, 100, recurring=False)
    recharge_price.update(unit_amount=PRICE_CENTS, currency="usd")
    fake.prices[RECHARGE] = recharge_price
    stripe_runner, stripe_url = await sf.serve(fake.app())
    ledger = await events_kit.start(
        base_dsn,
        data_dir,
        stripe_secret_key=Secret("sk_test_fake"),
        stripe_api_base=stripe_url,
        auto_recharge_failures_max=2,
    )
    config = sf.gateway_config(ledger.target, stripe_url, harness.TOKENS["billing"])
    gateway_runner, gateway_url = await sf.start_gateway(config)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        yield World(ledger, fake, sf.Gateway(gateway_url, http), ledger.client("admin"))
    await gateway_runner.cleanup()
    await ledger.close()
    await stripe_runner.cleanup()


async def customer_for(
    world: World, *, default_method: bool = True, declining: bool = False
) -> tuple[str, str]:
    """A user with 6 credits whose Stripe customer is linked by a purchase."""
    user, customer = new_user(), sf.new_id("cus")
    settings = {"default_payment_method": "pm_card_visa" if default_method else None}
    world.fake.customers[customer] = sf.obj("customer", id=customer, invoice_settings=settings)
    if declining:
        world.fake.declining.add(customer)
    await world.admin.ensure_account(user)
    billing = world.ledger.client("billing")
    await billing.billing.RecordPurchase(
        bpb.RecordPurchaseRequest(
            request_id=sf.new_id("evt"),
            user_id=user,
            purchase_id=sf.new_id("cs"),
            payment_id=sf.new_id("pi"),
            customer_id=customer,
            credits_micros=CREDIT,
            amount_paid_minor=100,
            currency="usd",
        )
    )
    return user, customer


def rule(user: str, limit_cents: int = 2 * PRICE_CENTS) -> epb.SetAutoRechargeRequest:
    return epb.SetAutoRechargeRequest(
        user_id=user,
        threshold_micros=3 * CREDIT,
        price_id=RECHARGE,
        monthly_limit_cents=limit_cents,
        enabled=True,
    )


async def attempts(world: World, user: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(world.ledger.dsn)
    try:
        return list(
            await conn.fetch(
                "SELECT * FROM auto_recharge_attempts WHERE user_id = $1 ORDER BY created_at", user
            )
        )
    finally:
        await conn.close()


async def types_of(world: World, user: str) -> list[str]:
    return [e["type"] for e in await events_kit.events_of(world.ledger.dsn, user)]


async def deliver(world: World, kind: str, intent: dict[str, Any]) -> int:
    created = int(world.ledger.clock.now().timestamp())
    response = await world.gateway.deliver(sf.event(kind, intent, created))
    return response.status


def charges_of(world: World, customer: str) -> list[dict[str, Any]]:
    return [c for c in world.fake.charges if c["customer"] == customer]


async def test_set_auto_recharge_needs_a_customer_with_a_default_payment_method(
    world: World,
) -> None:
    lonely = new_user()
    await world.admin.ensure_account(lonely)
    without, _ = await customer_for(world, default_method=False)
    with_method, _ = await customer_for(world)
    for user, reason in ((lonely, "NO_PAYMENT_CUSTOMER"), (without, "NO_DEFAULT_PAYMENT_METHOD")):
        with pytest.raises(cw.CreditWalletError) as refused:
            await world.admin.admin.SetAutoRecharge(rule(user))
        assert refused.value.reason == reason
    with pytest.raises(cw.CreditWalletError) as invalid:
        await world.admin.admin.SetAutoRecharge(rule(with_method, limit_cents=PRICE_CENTS - 1))
    assert invalid.value.reason == "INVALID_ARGUMENT"
    reply = await world.admin.admin.SetAutoRecharge(rule(with_method))
    assert (reply.rule.credits_micros, reply.rule.amount_cents, reply.rule.enabled) == (
        100 * CREDIT,
        PRICE_CENTS,
        True,
    )
    off = await world.admin.admin.SetAutoRecharge(
        epb.SetAutoRechargeRequest(user_id=with_method, enabled=False)
    )
    assert not off.rule.enabled


async def test_many_debits_one_attempt_one_charge_credits_once_and_the_monthly_limit(
    world: World, agent: AsyncCreditWalletClient
) -> None:
    user, customer = await customer_for(world)
    await world.admin.admin.SetAutoRecharge(rule(user))
    await world.admin.admin.SetBalanceAlert(
        epb.SetBalanceAlertRequest(user_id=user, threshold_micros=3 * CREDIT)
    )
    agent = world.ledger.client("agent")
    # 50 concurrent debits take the 6 credits to 1: across the threshold (3) once.
    await asyncio.gather(*(agent.debit(user, amount_micros=CREDIT // 10) for _ in range(50)))
    assert (await types_of(world, user)).count("balance.low") == 1
    [attempt] = await attempts(world, user)
    assert attempt["amount_minor"] == PRICE_CENTS

    async def charged() -> bool:
        return len(charges_of(world, customer)) == 1 and (
            (await attempts(world, user))[0]["status"] == "submitted"
        )

    await events_kit.wait_for(charged, "the worker created the PaymentIntent")
    [intent] = charges_of(world, customer)
    assert intent["metadata"]["creditwallet_attempt_id"] == str(attempt["attempt_id"])
    assert (await agent.get_balance(user)).available_micros == CREDIT, "no credits before paid"
    # The succeeded event, delivered three times (two of them distinct events): credits once.
    for _ in range(3):
        assert await deliver(world, "payment_intent.succeeded", intent) == 200
    assert (await agent.get_balance(user)).available_micros == 101 * CREDIT
    assert (await attempts(world, user))[0]["status"] == "succeeded"

    # A second crossing: a second recharge (the limit allows two per month)...
    await agent.debit(user, amount_micros=99 * CREDIT)

    async def second() -> bool:
        return len(charges_of(world, customer)) == 2

    await events_kit.wait_for(second, "the second recharge is charged")
    assert await deliver(world, "payment_intent.succeeded", charges_of(world, customer)[1]) == 200
    assert (await agent.get_balance(user)).available_micros == 102 * CREDIT
    # ...and a third crossing within the month records nothing: the limit would be passed.
    await agent.debit(user, amount_micros=100 * CREDIT)
    assert len(await attempts(world, user)) == 2
    total = sum(c["amount"] for c in charges_of(world, customer))
    assert total == 2 * PRICE_CENTS <= rule(user).monthly_limit_cents
    assert (await types_of(world, user)).count("auto_recharge.succeeded") == 2


async def test_webhook_before_the_worker_records_its_intent_grants_once(world: World) -> None:
    user, customer = await customer_for(world)
    await world.admin.admin.SetAutoRecharge(rule(user))
    world.fake.hold_create = asyncio.Event()
    world.fake.create_arrived = asyncio.Event()
    try:
        await world.admin.debit(user, amount_micros=4 * CREDIT)
        await asyncio.wait_for(world.fake.create_arrived.wait(), events_kit.WAIT_SECONDS)
        [intent] = charges_of(world, customer)
        # Stripe charged; its webhook arrives while the worker still waits for the answer.
        early = asyncio.ensure_future(deliver(world, "payment_intent.succeeded", intent))
        await asyncio.sleep(0.2)
        world.fake.hold_create.set()
        assert await early == 200
    finally:
        world.fake.hold_create = None
        world.fake.create_arrived = None
    assert await deliver(world, "payment_intent.succeeded", intent) == 200
    assert (await world.admin.get_balance(user)).available_micros == 102 * CREDIT
    [attempt] = await attempts(world, user)
    assert (attempt["status"], attempt["payment_intent_id"]) == ("succeeded", intent["id"])


async def test_declines_back_off_then_turn_the_rule_off(world: World) -> None:
    user, customer = await customer_for(world, declining=True)
    await world.admin.admin.SetAutoRecharge(rule(user))
    await world.admin.debit(user, amount_micros=4 * CREDIT)  # 6 -> 2: below 3

    async def failed(count: int) -> bool:
        done = [a for a in await attempts(world, user) if a["status"] == "failed"]
        return len(done) == count

    await events_kit.wait_for(lambda: failed(1), "the declined attempt fails")
    await world.admin.debit(user, amount_micros=CREDIT // 10)  # still below, backing off
    assert len(await attempts(world, user)) == 1
    world.ledger.clock.advance(hours=1, seconds=1)
    await world.admin.debit(user, amount_micros=CREDIT // 10)
    await events_kit.wait_for(lambda: failed(2), "the second attempt fails too")
    types = await types_of(world, user)
    assert types.count("auto_recharge.failed") == 2
    assert types.count("payment.failed") == 2
    assert types.count("auto_recharge.disabled") == 1
    world.ledger.clock.advance(hours=5)
    await world.admin.debit(user, amount_micros=CREDIT // 10)
    assert len(await attempts(world, user)) == 2, "the rule is off"
    assert charges_of(world, customer) == []
