"""``kill -9`` of the server while it delivers webhooks and while it pays an auto-recharge.

Deliveries: nothing is lost, and the only events a receiver gets twice are ones whose
delivery was in flight when the process died (acknowledged by the receiver but not yet
recorded); every event recorded as delivered before the kill arrives exactly once.
Payments: the PaymentIntent whose answer never reached the dead process is asked for again
with the same idempotency key after the restart, and the fake Stripe charges it once.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import asyncpg
from creditwallet.v1 import billing_service_pb2 as bpb
from creditwallet.v1 import events_pb2 as epb

from tests import events_kit, harness
from tests import stripe_fakes as sf
from tests.events_kit import Receiver
from tests.faults import load
from tests.faults.serverproc import ServerProcess

CREDIT = 1_000_000


async def fetch(dsn: str, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


async def test_kill_9_mid_delivery_loses_nothing_and_repeats_only_the_unrecorded(
    base_dsn: str, logs_dir: Path, record: list[str]
) -> None:
    receiver = await Receiver(events_kit.new_secret()).start()
    hooks = json.dumps([{"id": "warehouse", "url": receiver.url, "secret": receiver.secret}])
    dsn = await harness.fresh_database(base_dsn)
    proc = ServerProcess(
        dsn, logs_dir / "server.log", WEBHOOK_ENDPOINTS=hooks, EVENTS_POLL_SECONDS="0.02"
    )
    proc.start()
    admin = None
    try:
        await proc.wait_serving()
        admin = load.client(proc.target)
        users = [harness.new_user() for _ in range(8)]
        for user in users:
            await admin.ensure_account(user)
        receiver.hold = asyncio.Event()
        await asyncio.gather(
            *(admin.debit(u, amount_micros=CREDIT // 100) for u in users for _ in range(5))
        )
        await asyncio.wait_for(receiver.held.wait(), events_kit.WAIT_SECONDS)
        await asyncio.sleep(0.2)  # let the other senders reach the receiver too
        proc.kill()
        recorded = {
            r["event_id"]
            for r in await fetch(
                dsn,
                "SELECT e.event_id FROM webhook_deliveries d JOIN events e "
                "ON e.user_id = d.user_id AND e.seq = d.seq WHERE d.status = 'delivered'",
            )
        }
        in_flight = set(receiver.in_flight)
        receiver.hold.set()  # the receiver now acknowledges what a dead process sent
        receiver.hold = None
        await asyncio.sleep(0.1)
        proc.start()
        await proc.wait_serving()
        expected = {r["event_id"] for r in await fetch(dsn, "SELECT event_id FROM events")}

        async def all_delivered() -> bool:
            return set(receiver.unique()) == expected

        await events_kit.wait_for(all_delivered, "every event delivered after the restart")
        counts: dict[str, int] = {}
        for delivery in receiver.acknowledged():
            counts[delivery.webhook_id] = counts.get(delivery.webhook_id, 0) + 1
        twice = {event for event, n in counts.items() if n > 1}
        assert in_flight, "the kill hit deliveries in flight"
        assert twice <= in_flight, "only deliveries in flight at the kill come again"
        assert not twice & recorded, "nothing recorded as delivered is sent again"
        assert all(n <= 2 for n in counts.values())
        for user in users:
            seqs = [
                d.body["sequence"]
                for d in receiver.acknowledged()
                if d.body["user_id"] == user and receiver.unique()[d.webhook_id] is d
            ]
            assert seqs == sorted(seqs), "first receipts in order per account"
        record.append(
            f"kill -9 mid-delivery: events={len(expected)}, acknowledged deliveries="
            f"{len(receiver.acknowledged())}, in flight at kill={len(in_flight)}, "
            f"received twice={len(twice)}, lost=0"
        )
    finally:
        if admin is not None:
            await admin.close()
        proc.stop()
        await receiver.stop()


async def test_payment_intent_retried_after_a_crash_is_charged_once(
    base_dsn: str, logs_dir: Path, record: list[str]
) -> None:
    fake = sf.FakeStripe()
    price = sf.price("price_cw_recharge_100", 100, recurring=False)
    price.update(unit_amount=499, currency="usd")
    fake.prices[price["id"]] = price
    runner, stripe_url = await sf.serve(fake.app())
    dsn = await harness.fresh_database(base_dsn)
    proc = ServerProcess(
        dsn,
        logs_dir / "server.log",
        STRIPE_SECRET_KEY="sk_test_fake",
        STRIPE_API_BASE=stripe_url,
        EVENTS_POLL_SECONDS="0.02",
    )
    proc.start()
    admin = billing = None
    try:
        await proc.wait_serving()
        admin = load.client(proc.target)
        billing = load.client(proc.target, "billing")
        user, customer = harness.new_user(), sf.new_id("cus")
        fake.customers[customer] = sf.obj(
            "customer", id=customer, invoice_settings={"default_payment_method": "pm_card_visa"}
        )
        await admin.ensure_account(user)
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
        await admin.admin.SetAutoRecharge(
            epb.SetAutoRechargeRequest(
                user_id=user,
                threshold_micros=3 * CREDIT,
                price_id=price["id"],
                monthly_limit_cents=5000,
                enabled=True,
            )
        )
        fake.hold_create = asyncio.Event()
        fake.create_arrived = asyncio.Event()
        await admin.debit(user, amount_micros=4 * CREDIT)
        await asyncio.wait_for(fake.create_arrived.wait(), events_kit.WAIT_SECONDS)
        proc.kill()  # Stripe has charged; the process dies before it hears so
        fake.hold_create.set()
        fake.hold_create = None
        assert len(fake.charges) == 1
        proc.start()
        await proc.wait_serving()

        async def submitted() -> bool:
            rows = await fetch(dsn, "SELECT status FROM auto_recharge_attempts")
            return [r["status"] for r in rows] == ["submitted"]

        await events_kit.wait_for(submitted, "the retried attempt has its PaymentIntent")
        assert fake.creates == 2, "asked twice"
        assert len(fake.charges) == 1, "charged once: the same idempotency key"
        [intent] = fake.charges
        rows = await fetch(dsn, "SELECT payment_intent_id FROM auto_recharge_attempts")
        assert rows[0]["payment_intent_id"] == intent["id"]
        record.append(
            f"kill -9 mid-payment: PaymentIntent creates={fake.creates}, "
            f"charges={len(fake.charges)}"
        )
    finally:
        for client in (admin, billing):
            if client is not None:
                await client.close()
        proc.stop()
        await runner.cleanup()
