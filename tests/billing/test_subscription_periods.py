"""Subscription lots expire at the provider's real period ends, on a clock moved month by month.

Real signed webhooks go through the real gateway (Stripe's API is the local fake) wherever
the behaviour lives in the gateway (which lines bill a period, trials, prorations, the
schedule); corrections the ledger makes on its own are driven through BillingService.
Each test lives in its own year, so the module's one clock only ever moves forward.
"""

from __future__ import annotations

import asyncio
import calendar
import dataclasses
import datetime as dt
import io
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from creditwallet.client import errors as cw
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.server.ledger import periods
from creditwallet.v1 import billing_service_pb2 as bpb
from creditwallet.v1 import common_pb2 as pb
from google.protobuf import timestamp_pb2
from hypothesis import given
from hypothesis import strategies as st

from tests import harness
from tests import stripe_fakes as sf
from tests.harness import Ledger, new_user

pytestmark = pytest.mark.usefixtures("verified")

CREDIT = 1_000_000
UTC = dt.UTC
PRO = "price_cw_monthly_pro_1000"
LITE = "price_cw_monthly_lite_100"


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, tzinfo=UTC)


def unix(moment: dt.datetime) -> int:
    return int(moment.timestamp())


def ts(moment: dt.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stripe_api() -> AsyncIterator[tuple[sf.FakeStripe, str]]:
    fake = sf.FakeStripe()
    fake.prices[sf.MONTHLY] = sf.price(sf.MONTHLY, 250, recurring=True)
    fake.prices[PRO] = sf.price(PRO, 1000, recurring=True)
    fake.prices[LITE] = sf.price(LITE, 100, recurring=True)
    runner, url = await sf.serve(fake.app())
    yield fake, url
    await runner.cleanup()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gateway(
    ledger: Ledger,
    stripe_api: tuple[sf.FakeStripe, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[sf.Gateway]:
    config = sf.gateway_config(ledger.target, stripe_api[1], harness.TOKENS["billing"])
    plans = {
        PRO: {"kind": "subscription", "credits": "1000", "unit_amount": 2999, "currency": "usd"},
        LITE: {"kind": "subscription", "credits": "100", "unit_amount": 299, "currency": "usd"},
    }
    catalog = sf.catalog_with(tmp_path_factory.mktemp("catalog"), plans)
    config = dataclasses.replace(config, catalog_path=catalog)
    runner, url = await sf.start_gateway(config)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        yield sf.Gateway(url, http)
    await runner.cleanup()


@pytest.fixture
def fake(stripe_api: tuple[sf.FakeStripe, str]) -> sf.FakeStripe:
    return stripe_api[0]


@dataclasses.dataclass
class Subscriber:
    """One customer with one subscription, driven by signed events on the ledger's clock."""

    ledger: Ledger
    gateway: sf.Gateway
    fake: sf.FakeStripe
    anchor: dt.datetime
    price_id: str = sf.MONTHLY
    user: str = dataclasses.field(default_factory=new_user)
    sub_id: str = dataclasses.field(default_factory=lambda: sf.new_id("sub"))
    customer: str = dataclasses.field(default_factory=lambda: sf.new_id("cus"))

    def state(
        self,
        status: str,
        start: dt.datetime,
        end: dt.datetime,
        *,
        trial: tuple[dt.datetime, dt.datetime] | None = None,
    ) -> dict[str, Any]:
        """The subscription as Stripe's API now answers it (and as its events carry it)."""
        sub = sf.subscription(
            self.sub_id,
            self.customer,
            status,
            unix(start),
            unix(end),
            self.fake.prices[self.price_id],
            anchor=unix(self.anchor),
            trial=(unix(trial[0]), unix(trial[1])) if trial else None,
        )
        sub["metadata"] = {"user_id": self.user}
        self.fake.subscriptions[self.sub_id] = sub
        return sub

    def invoice(
        self,
        start: dt.datetime,
        end: dt.datetime,
        *,
        reason: str = "subscription_cycle",
        paid: int = 999,
        lines: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        if lines is None:
            lines = [sf.period_line(self.sub_id, unix(start), unix(end), price_id=self.price_id)]
        inv = sf.invoice(
            self.sub_id,
            self.customer,
            unix(start),
            unix(end),
            payment=sf.new_id("pi"),
            paid=paid,
            billing_reason=reason,
            lines=lines,
        )
        inv["parent"]["subscription_details"]["metadata"] = {"user_id": self.user}
        self.fake.invoices[inv["id"]] = inv
        return inv

    async def send(
        self, kind: str, data: dict[str, Any], created: dt.datetime, event_id: str | None = None
    ) -> dict[str, Any]:
        body = sf.event(kind, data, unix(created), event_id)
        headers = {"Stripe-Signature": sf.sign(body), "Content-Type": "application/json"}
        url = self.gateway.url + "/stripe/webhook"
        async with self.gateway.http.post(url, data=io.BytesIO(body), headers=headers) as r:
            answer = json.loads(await r.read())
            assert r.status == 200, answer
            return dict(answer)

    async def paid(self, inv: dict[str, Any], created: dt.datetime) -> dict[str, Any]:
        return await self.send("invoice.paid", inv, created)

    async def renew(self, start: dt.datetime, end: dt.datetime) -> dict[str, Any]:
        """Stripe's renewal: the invoice is paid, then the subscription moves to the period."""
        self.ledger.clock.set(start + dt.timedelta(minutes=30))
        answer = await self.paid(self.invoice(start, end), start + dt.timedelta(minutes=30))
        await self.send(
            "customer.subscription.updated",
            self.state("active", start, end),
            start + dt.timedelta(minutes=31),
        )
        return answer


def granted(answer: dict[str, Any]) -> int:
    return int(answer.get("result", {}).get("grantedMicros", 0)) // CREDIT


async def live(admin: AsyncCreditWalletClient, user: str) -> list[tuple[int, dt.datetime]]:
    """The live subscription lots: (remaining credits, expiry), soonest first."""
    balance = await admin.get_balance(user)
    return [
        (lot.remaining_micros // CREDIT, lot.expires_at.ToDatetime(tzinfo=UTC))
        for group in balance.lots
        if group.source == pb.LOT_SOURCE_SUBSCRIPTION
        for lot in group.lots
    ]


async def available(admin: AsyncCreditWalletClient, user: str) -> int:
    return (await admin.get_balance(user)).available_micros // CREDIT


async def rows(
    admin: AsyncCreditWalletClient, user: str, kind: pb.TransactionType.ValueType
) -> list[pb.Transaction]:
    page = await admin.list_transactions(user, page_size=200, type=kind)
    return list(reversed(page.transactions))


async def moves(admin: AsyncCreditWalletClient, user: str) -> list[tuple[str, str]]:
    """Each recorded expiry change of the user's lots: (previous, new), oldest first."""
    changes = await rows(admin, user, pb.TRANSACTION_TYPE_EXPIRY_CHANGE)
    assert all(t.amount_micros == 0 for t in changes)
    return [(t.metadata["previous_expires_at"], t.metadata["expires_at"]) for t in changes]


async def spendable_exactly(admin: AsyncCreditWalletClient, user: str, credits: int) -> None:
    """``credits`` are available, and one micro more is refused."""
    assert await available(admin, user) == credits
    with pytest.raises(cw.InsufficientCredits):
        await admin.debit(user, amount_micros=credits * CREDIT + 1)


async def test_a_prorated_first_period_leaves_exactly_the_live_credits_spendable(
    ledger: Ledger, gateway: sf.Gateway, fake: sf.FakeStripe, admin: AsyncCreditWalletClient
) -> None:
    """Billing on the 1st, subscribed Aug 20 12:00: P0 = [Aug 20 12:00, Sep 1) is prorated,
    its lot expires at the end of P1 = [Sep 1, Oct 1), not on Oct 20."""
    clock = ledger.clock
    s = Subscriber(ledger, gateway, fake, anchor=at(2030, 9, 1))
    subscribed = at(2030, 8, 20, 12)
    clock.set(subscribed)
    first = s.invoice(subscribed, at(2030, 9, 1), reason="subscription_create", paid=387)
    session = sf.obj(
        "checkout.session",
        id=sf.new_id("cs"),
        mode="subscription",
        payment_status="paid",
        client_reference_id=s.user,
        customer=s.customer,
        subscription=s.sub_id,
        invoice=first["id"],
        payment_intent=None,
        amount_total=387,
        currency="usd",
    )
    fake.line_items[session["id"]] = [sf.line_item(fake.prices[sf.MONTHLY])]
    created = s.state("incomplete", subscribed, at(2030, 9, 1))
    await s.send("customer.subscription.created", created, subscribed)
    # The invoice, redelivered and delivered concurrently, and the checkout: one grant.
    answers = await asyncio.gather(*(s.paid(first, subscribed) for _ in range(4)))
    await s.send("checkout.session.completed", session, subscribed + dt.timedelta(seconds=2))
    assert sorted(granted(a) for a in answers) == [0, 0, 0, 250]
    assert await live(admin, s.user) == [(250, at(2030, 10, 1))]
    await s.renew(at(2030, 9, 1), at(2030, 10, 1))
    assert await live(admin, s.user) == [(250, at(2030, 10, 1)), (250, at(2030, 11, 1))]
    clock.set(at(2030, 9, 30, 23, 59))
    await spendable_exactly(admin, s.user, 500)
    # Oct 1 00:05, before P2's renewal or any rollover: P0's lot has expired.
    clock.set(at(2030, 10, 1, 0, 5))
    balance = await admin.get_balance(s.user)
    assert balance.available_micros == 250 * CREDIT
    with pytest.raises(cw.InsufficientCredits):
        await admin.debit(s.user, amount_micros=300 * CREDIT)
    assert [
        t.amount_micros // CREDIT for t in await rows(admin, s.user, pb.TRANSACTION_TYPE_EXPIRE)
    ] == [-250]
    await s.renew(at(2030, 10, 1), at(2030, 11, 1))
    assert await live(admin, s.user) == [(250, at(2030, 11, 1)), (250, at(2030, 12, 1))]
    # Every expiry was right from the start: nothing was corrected.
    assert await moves(admin, s.user) == []


async def test_a_subscription_started_on_the_31st_follows_the_month_ends(
    ledger: Ledger, gateway: sf.Gateway, fake: sf.FakeStripe, admin: AsyncCreditWalletClient
) -> None:
    """Anchor Jan 31 10:00: periods end Feb 28, Mar 31, Apr 30, May 31, Jun 30 at 10:00."""
    clock = ledger.clock
    s = Subscriber(ledger, gateway, fake, anchor=at(2031, 1, 31, 10))
    days = ((1, 31), (2, 28), (3, 31), (4, 30), (5, 31), (6, 30), (7, 31))
    ends = [at(2031, month, day, 10) for month, day in days]
    first = s.invoice(ends[0], ends[1], reason="subscription_create")
    for index in range(5):
        start, end = ends[index], ends[index + 1]
        clock.set(start + dt.timedelta(minutes=10))
        if index:  # just before the renewal only the previous period's lot is live
            await spendable_exactly(admin, s.user, 250)
        inv = first if index == 0 else s.invoice(start, end)
        clock.set(start + dt.timedelta(minutes=30))
        assert granted(await s.paid(inv, start)) == 250
        # A newer update, then an older one delivered late: the older changes nothing.
        await s.send("customer.subscription.updated", s.state("active", start, end), start)
        stale = s.state("active", ends[0], ends[1])
        await s.send("customer.subscription.updated", stale, start - dt.timedelta(hours=1))
        # The first invoice redelivered months later grants nothing.
        assert granted(await s.paid(first, ends[0])) == 0
        expected = [(250, ends[index + 1])] if index else []
        assert await live(admin, s.user) == [*expected, (250, ends[index + 2])]
    assert await moves(admin, s.user) == []


async def test_a_seven_day_trial_grants_from_its_first_paid_period(
    ledger: Ledger, gateway: sf.Gateway, fake: sf.FakeStripe, admin: AsyncCreditWalletClient
) -> None:
    clock = ledger.clock
    start, trial_end = at(2032, 8, 1, 10), at(2032, 8, 8, 10)
    s = Subscriber(ledger, gateway, fake, anchor=trial_end)
    clock.set(start)
    trial_invoice = s.invoice(start, trial_end, reason="subscription_create", paid=0)
    trial_invoice["lines"]["data"][0]["amount"] = 0
    session = sf.obj(
        "checkout.session",
        id=sf.new_id("cs"),
        mode="subscription",
        payment_status="no_payment_required",
        client_reference_id=s.user,
        customer=s.customer,
        subscription=s.sub_id,
        invoice=trial_invoice["id"],
        payment_intent=None,
        amount_total=0,
        currency="usd",
    )
    fake.line_items[session["id"]] = [sf.line_item(fake.prices[sf.MONTHLY])]
    trialing = s.state("trialing", start, trial_end, trial=(start, trial_end))
    await s.send("customer.subscription.created", trialing, start)
    assert "ignored" in await s.paid(trial_invoice, start)
    linked = await s.send("checkout.session.completed", session, start)
    assert linked["result"]["subscription"]["status"] == "SUBSCRIPTION_STATUS_TRIALING"
    # Stripe's API down: the $0 invoice is still no paid period.
    fake.down = True
    try:
        assert "ignored" in await s.paid(trial_invoice, start + dt.timedelta(minutes=1))
    finally:
        fake.down = False
    with pytest.raises(cw.AccountNotFound):
        await admin.get_balance(s.user)
    # The trial ends: the first paid period starts on the anchor, expires a period later.
    first_paid = s.invoice(trial_end, at(2032, 9, 8, 10))
    clock.set(trial_end + dt.timedelta(hours=1))
    assert granted(await s.paid(first_paid, trial_end + dt.timedelta(hours=1))) == 250
    await s.send(
        "customer.subscription.updated",
        s.state("active", trial_end, at(2032, 9, 8, 10), trial=(start, trial_end)),
        trial_end + dt.timedelta(hours=1),
    )
    balance = await admin.get_balance(s.user)
    assert balance.subscription.status == pb.SUBSCRIPTION_STATUS_ACTIVE
    assert await live(admin, s.user) == [(250, at(2032, 10, 8, 10))]
    await s.renew(at(2032, 9, 8, 10), at(2032, 10, 8, 10))
    clock.set(at(2032, 10, 8, 10))
    await spendable_exactly(admin, s.user, 250)


async def test_an_anchor_reset_cuts_the_period_and_records_the_moved_expiries(
    ledger: Ledger, gateway: sf.Gateway, fake: sf.FakeStripe, admin: AsyncCreditWalletClient
) -> None:
    clock = ledger.clock
    s = Subscriber(ledger, gateway, fake, anchor=at(2033, 1, 10))
    clock.set(at(2033, 1, 10, 0, 30))
    await s.paid(
        s.invoice(at(2033, 1, 10), at(2033, 2, 10), reason="subscription_create"), at(2033, 1, 10)
    )
    await admin.debit(s.user, amount_micros=100 * CREDIT)
    await s.renew(at(2033, 2, 10), at(2033, 3, 10))
    assert await live(admin, s.user) == [(150, at(2033, 3, 10)), (250, at(2033, 4, 10))]
    # Feb 20 12:00: billing_cycle_anchor=now. Stripe invoices at once: a credit for the
    # unused rest of [Feb 10, Mar 10) and a new full period [Feb 20 12:00, Mar 20 12:00).
    reset = at(2033, 2, 20, 12)
    clock.set(reset)
    s.anchor = reset
    s.state("active", reset, at(2033, 3, 20, 12))
    lines = [
        sf.proration_line(
            s.sub_id, unix(reset), unix(at(2033, 3, 10)), price_id=sf.MONTHLY, amount=-600
        ),
        sf.period_line(s.sub_id, unix(reset), unix(at(2033, 3, 20, 12))),
    ]
    inv = s.invoice(reset, at(2033, 3, 20, 12), reason="subscription_update", paid=399, lines=lines)
    assert granted(await s.paid(inv, reset)) == 250
    assert granted(await s.paid(inv, reset)) == 0
    # P1's lot rolled into P2, which now ended at the reset: it expired then. P2's lot rolls
    # into the new period. Both moves are in the history.
    assert await live(admin, s.user) == [(250, at(2033, 3, 20, 12)), (250, at(2033, 4, 20, 12))]
    assert await moves(admin, s.user) == [
        (at(2033, 3, 10).isoformat(), reset.isoformat()),
        (at(2033, 4, 10).isoformat(), at(2033, 3, 20, 12).isoformat()),
    ]
    assert [
        t.amount_micros // CREDIT for t in await rows(admin, s.user, pb.TRANSACTION_TYPE_EXPIRE)
    ] == [-150]
    clock.set(at(2033, 3, 20, 12))
    await spendable_exactly(admin, s.user, 250)
    await s.renew(at(2033, 3, 20, 12), at(2033, 4, 20, 12))
    assert await live(admin, s.user) == [(250, at(2033, 4, 20, 12)), (250, at(2033, 5, 20, 12))]
    assert len(await moves(admin, s.user)) == 2


async def test_an_upgrade_and_a_downgrade_with_proration_grant_each_period_once(
    ledger: Ledger, gateway: sf.Gateway, fake: sf.FakeStripe, admin: AsyncCreditWalletClient
) -> None:
    clock = ledger.clock
    s = Subscriber(ledger, gateway, fake, anchor=at(2034, 1, 1))
    clock.set(at(2034, 1, 1, 0, 30))
    await s.paid(
        s.invoice(at(2034, 1, 1), at(2034, 2, 1), reason="subscription_create"), at(2034, 1, 1)
    )
    # Jan 15: upgrade to the 1000-credit plan, prorations invoiced at once (always_invoice):
    # the invoice holds only the credit for the old plan and the charge for the new one.
    change = at(2034, 1, 15)
    clock.set(change)
    s.price_id = PRO
    await s.send(
        "customer.subscription.updated", s.state("active", at(2034, 1, 1), at(2034, 2, 1)), change
    )
    upgrade = s.invoice(
        change,
        at(2034, 2, 1),
        reason="subscription_update",
        paid=1100,
        lines=[
            sf.proration_line(
                s.sub_id, unix(change), unix(at(2034, 2, 1)), price_id=sf.MONTHLY, amount=-500
            ),
            sf.proration_line(
                s.sub_id, unix(change), unix(at(2034, 2, 1)), price_id=PRO, amount=1600
            ),
        ],
    )
    assert "ignored" in await s.paid(upgrade, change)
    # The same proration, shaped as a subscription item's line flagged as a proration.
    flagged = sf.period_line(
        s.sub_id, unix(change), unix(at(2034, 2, 1)), price_id=PRO, proration=True
    )
    shaped = s.invoice(
        change, at(2034, 2, 1), reason="subscription_update", paid=1100, lines=[flagged]
    )
    assert "ignored" in await s.paid(shaped, change)
    # An invoice with no subscription item line at all never falls back to its first line.
    items_only = s.invoice(
        change,
        at(2034, 2, 1),
        reason="subscription_cycle",
        lines=[
            sf.proration_line(
                s.sub_id, unix(change), unix(at(2034, 3, 1)), price_id=PRO, amount=999
            )
        ],
    )
    assert "ignored" in await s.paid(items_only, change)
    assert await live(admin, s.user) == [(250, at(2034, 3, 1))]
    # Feb 1: the renewal on the new plan grants its 1000 once.
    await s.renew(at(2034, 2, 1), at(2034, 3, 1))
    assert await live(admin, s.user) == [(250, at(2034, 3, 1)), (1000, at(2034, 4, 1))]
    # Feb 10: downgrade to 100 credits with pending prorations (create_prorations): they
    # ride on the Mar 1 renewal next to the new period's line.
    clock.set(at(2034, 2, 10))
    s.price_id = LITE
    await s.send(
        "customer.subscription.updated",
        s.state("active", at(2034, 2, 1), at(2034, 3, 1)),
        at(2034, 2, 10),
    )
    clock.set(at(2034, 3, 1, 0, 30))
    renewal = s.invoice(
        at(2034, 3, 1),
        at(2034, 4, 1),
        paid=300,
        lines=[
            sf.proration_line(
                s.sub_id, unix(at(2034, 2, 10)), unix(at(2034, 3, 1)), price_id=PRO, amount=-1000
            ),
            sf.proration_line(
                s.sub_id, unix(at(2034, 2, 10)), unix(at(2034, 3, 1)), price_id=LITE, amount=200
            ),
            sf.period_line(s.sub_id, unix(at(2034, 3, 1)), unix(at(2034, 4, 1)), price_id=LITE),
        ],
    )
    answers = await asyncio.gather(*(s.paid(renewal, at(2034, 3, 1)) for _ in range(3)))
    assert sorted(granted(a) for a in answers) == [0, 0, 100]
    # The carried 1000 is capped at the new allotment: 900 expire now.
    assert await live(admin, s.user) == [(100, at(2034, 4, 1)), (100, at(2034, 5, 1))]
    grants = [
        t.amount_micros // CREDIT for t in await rows(admin, s.user, pb.TRANSACTION_TYPE_GRANT)
    ]
    assert grants == [250, 1000, 100]
    expired = await rows(admin, s.user, pb.TRANSACTION_TYPE_EXPIRE)
    assert sorted((t.amount_micros // CREDIT, t.metadata.get("reason", "")) for t in expired) == [
        (-900, "carry_over_cap"),
        (-250, ""),
    ]


async def test_paused_collection_grants_nothing_for_the_voided_period(
    ledger: Ledger, gateway: sf.Gateway, fake: sf.FakeStripe, admin: AsyncCreditWalletClient
) -> None:
    """pause_collection (void): periods go on, unpaid; the last paid lot still rolls over
    once, into the voided period, and the next paid period starts its own lot."""
    clock = ledger.clock
    s = Subscriber(ledger, gateway, fake, anchor=at(2035, 1, 5))
    clock.set(at(2035, 1, 5, 0, 30))
    await s.paid(
        s.invoice(at(2035, 1, 5), at(2035, 2, 5), reason="subscription_create"), at(2035, 1, 5)
    )
    paused = s.state("active", at(2035, 2, 5), at(2035, 3, 5))
    paused["pause_collection"] = {"behavior": "void", "resumes_at": unix(at(2035, 3, 5))}
    clock.set(at(2035, 2, 5, 0, 30))
    await s.send("customer.subscription.updated", paused, at(2035, 2, 5))
    voided = s.invoice(at(2035, 2, 5), at(2035, 3, 5), paid=0)
    voided["status"] = "void"
    assert "ignored" in await s.send("invoice.voided", voided, at(2035, 2, 5))
    assert await live(admin, s.user) == [(250, at(2035, 3, 5))]
    clock.set(at(2035, 3, 5))
    await spendable_exactly(admin, s.user, 0)
    await s.renew(at(2035, 3, 5), at(2035, 4, 5))
    assert await live(admin, s.user) == [(250, at(2035, 5, 5))]
    assert await moves(admin, s.user) == []


async def test_invoices_out_of_order_and_concurrently_grant_once_with_the_right_ends(
    ledger: Ledger, gateway: sf.Gateway, fake: sf.FakeStripe, admin: AsyncCreditWalletClient
) -> None:
    clock = ledger.clock
    s = Subscriber(ledger, gateway, fake, anchor=at(2036, 1, 1))
    p1 = s.invoice(at(2036, 1, 1), at(2036, 2, 1), reason="subscription_create")
    p2 = s.invoice(at(2036, 2, 1), at(2036, 3, 1))
    p3 = s.invoice(at(2036, 3, 1), at(2036, 4, 1))
    clock.set(at(2036, 3, 1, 1))
    s.state("active", at(2036, 3, 1), at(2036, 4, 1))
    # P3 and P2 arrive before P1, each several times at once.
    answers = await asyncio.gather(
        *(s.paid(inv, at(2036, 1, 1)) for inv in (p3, p2, p1, p3, p2, p1, p3))
    )
    assert sum(granted(a) for a in answers) == 750
    # P1's lot ended with P2 (recorded already), so P1's lot expired at Mar 1.
    assert await live(admin, s.user) == [(250, at(2036, 4, 1)), (250, at(2036, 5, 1))]
    assert await moves(admin, s.user) == []
    schedule = await ledger.pool.fetchrow(
        "SELECT billing_cycle_anchor FROM subscriptions WHERE subscription_id = $1", s.sub_id
    )
    assert schedule is not None
    assert schedule["billing_cycle_anchor"] == at(2036, 1, 1)
    stale = s.state("active", at(2036, 1, 1), at(2036, 2, 1))
    stale["billing_cycle_anchor"] = unix(at(2035, 12, 1))
    await s.send("customer.subscription.updated", stale, at(2036, 3, 1, 2))
    older = dict(stale, billing_cycle_anchor=unix(at(2035, 11, 1)))
    await s.send("customer.subscription.updated", older, at(2036, 3, 1))
    schedule = await ledger.pool.fetchrow(
        "SELECT billing_cycle_anchor FROM subscriptions WHERE subscription_id = $1", s.sub_id
    )
    assert schedule is not None
    assert schedule["billing_cycle_anchor"] == at(2035, 12, 1)
    # An event retried after Stripe's answers changed maps to another request under the
    # same event id: it was applied once already, and the retry is acknowledged.
    p4 = s.invoice(at(2036, 4, 1), at(2036, 5, 1))
    clock.set(at(2036, 4, 1, 1))
    s.state("active", at(2036, 4, 1), at(2036, 5, 1))
    assert granted(await s.send("invoice.paid", p4, at(2036, 4, 1), "evt_retried_p4")) == 250
    s.anchor = at(2036, 4, 1, 1)
    s.state("active", at(2036, 4, 1, 1), at(2036, 5, 1, 1))
    retried = await s.send("invoice.paid", p4, at(2036, 4, 1), "evt_retried_p4")
    assert retried == {"method": "SyncSubscription", "already_applied": True}
    grants = await rows(admin, s.user, pb.TRANSACTION_TYPE_GRANT)
    assert [t.amount_micros // CREDIT for t in grants] == [250, 250, 250, 250]


async def _sync(
    ledger: Ledger, sub: str, user: str, start: dt.datetime, end: dt.datetime
) -> bpb.SyncSubscriptionResponse:
    """A paid period with no schedule (the provider's API could not be read)."""
    billing = ledger.client("billing")
    return await billing.billing.SyncSubscription(
        bpb.SyncSubscriptionRequest(
            request_id=f"evt_{uuid.uuid4().hex}",
            subscription_id=sub,
            customer_id="cus_" + sub,
            user_id=user,
            status=pb.SUBSCRIPTION_STATUS_ACTIVE,
            price_id="price_yearly",
            period_credits_micros=250 * CREDIT,
            current_period_start=ts(start),
            current_period_end=ts(end),
            event_created_at=ts(start),
            paid_period=bpb.PaidPeriod(
                period_start=ts(start),
                period_end=ts(end),
                payment_id=f"pi_{uuid.uuid4().hex}",
                amount_paid_minor=999,
                currency="usd",
            ),
        )
    )


async def test_a_guessed_expiry_is_corrected_by_the_next_period_and_never_revives(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """A yearly plan's prorated first period, recorded without its schedule: the period
    implies a monthly one (its expiry is a guess), the next paid period corrects it."""
    clock = ledger.clock
    user, sub = new_user(), "sub_guess_" + uuid.uuid4().hex[:8]
    clock.set(at(2037, 8, 20, 12))
    first = await _sync(ledger, sub, user, at(2037, 8, 20, 12), at(2038, 1, 1))
    assert first.granted_micros == 250 * CREDIT
    assert await live(admin, user) == [(250, at(2038, 2, 1))]
    clock.set(at(2038, 1, 1, 1))
    await _sync(ledger, sub, user, at(2038, 1, 1), at(2039, 1, 1))
    assert await live(admin, user) == [(250, at(2039, 1, 1)), (250, at(2040, 1, 1))]
    assert await moves(admin, user) == [(at(2038, 2, 1).isoformat(), at(2039, 1, 1).isoformat())]
    # Another guess, learnt only after the guessed expiry passed: the lot stays expired.
    other, sub2 = new_user(), "sub_late_" + uuid.uuid4().hex[:8]
    clock.set(at(2039, 8, 20, 12))
    await _sync(ledger, sub2, other, at(2039, 8, 20, 12), at(2040, 1, 1))
    await admin.debit(other, amount_micros=50 * CREDIT)
    clock.set(at(2040, 2, 2))
    await spendable_exactly(admin, other, 0)
    await _sync(ledger, sub2, other, at(2040, 1, 1), at(2041, 1, 1))
    assert await live(admin, other) == [(250, at(2042, 1, 1))]
    assert await moves(admin, other) == []
    frozen = await ledger.pool.fetchval(
        "SELECT expiry_frozen_at FROM subscription_periods WHERE subscription_id = $1 "
        "AND period_start = $2",
        sub2,
        at(2039, 8, 20, 12),
    )
    assert frozen == at(2040, 2, 2)


async def test_an_earlier_end_learnt_late_ends_the_lot_when_it_is_learnt(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """An anchor reset at 12:00 whose invoice arrives at 12:10, after a debit at 12:05 spent
    from the lot that should have expired at 12:00: that lot ends at 12:10, not back at
    12:00, so no recorded debit ever spent an expired credit."""
    clock = ledger.clock
    user, sub = new_user(), "sub_late_cut_" + uuid.uuid4().hex[:8]
    clock.set(at(2041, 1, 10, 1))
    await _sync(ledger, sub, user, at(2041, 1, 10), at(2041, 2, 10))
    clock.set(at(2041, 2, 10, 1))
    await _sync(ledger, sub, user, at(2041, 2, 10), at(2041, 3, 10))
    clock.set(at(2041, 2, 20, 12, 5))
    await admin.debit(user, amount_micros=10 * CREDIT)  # from the lot expiring Mar 10
    clock.set(at(2041, 2, 20, 12, 10))
    reset = await _sync(ledger, sub, user, at(2041, 2, 20, 12), at(2041, 3, 20, 12))
    assert reset.granted_micros == 250 * CREDIT
    assert await moves(admin, user) == [
        (at(2041, 3, 10).isoformat(), at(2041, 2, 20, 12, 10).isoformat()),
        (at(2041, 4, 10).isoformat(), at(2041, 3, 20, 12).isoformat()),
    ]
    assert await live(admin, user) == [(250, at(2041, 3, 20, 12)), (250, at(2041, 4, 20, 12))]
    assert [
        t.amount_micros // CREDIT for t in await rows(admin, user, pb.TRANSACTION_TYPE_EXPIRE)
    ] == [-240]


async def test_verify_ledger_sees_a_lot_expiring_off_its_period(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """Break the data the way a bug would, one way at a time, and watch the check see it."""
    clock = ledger.clock
    user, sub = new_user(), "sub_verify_" + uuid.uuid4().hex[:8]
    clock.set(at(2042, 3, 1, 1))
    await _sync(ledger, sub, user, at(2042, 3, 1), at(2042, 4, 1))
    lot = await ledger.pool.fetchrow(
        "SELECT lot_id, expires_at FROM credit_lots WHERE user_id = $1", user
    )
    assert lot is not None
    assert lot["expires_at"] == at(2042, 5, 1)
    move_lot = "UPDATE credit_lots SET expires_at = $3 WHERE user_id = $1 AND lot_id = $2"
    move_period = (
        "UPDATE subscription_periods SET expires_at = $3 WHERE user_id = $1 AND lot_id = $2"
    )
    for statements in ([move_lot], [move_lot, move_period]):
        for statement in statements:
            await ledger.pool.execute(statement, user, lot["lot_id"], at(2042, 5, 2))
        report = await admin.verify_ledger()
        for statement in statements:
            await ledger.pool.execute(statement, user, lot["lot_id"], lot["expires_at"])
        assert not report.ok
        assert {(v.invariant, v.user_id) for v in report.violations} == {(6, user)}
    assert (await admin.verify_ledger()).ok


@given(
    anchor=st.datetimes(min_value=dt.datetime(2001, 1, 1), max_value=dt.datetime(2150, 12, 31)).map(
        lambda d: d.replace(microsecond=0, tzinfo=UTC)
    ),
    unit=st.sampled_from(periods.INTERVALS),
    count=st.integers(min_value=1, max_value=14),
    n=st.integers(min_value=0, max_value=40),
)
async def test_the_schedule_arithmetic_agrees_with_postgresql(
    ledger: Ledger, anchor: dt.datetime, unit: str, count: int, n: int
) -> None:
    """Boundaries from the anchor (day clamped, time kept), in the server's Python and in the
    SQL function VerifyLedger uses: the same answers, and None off the schedule."""
    schedule = periods.Schedule(anchor, unit, count)
    end = schedule.boundary(n)
    assert schedule.index_of(end) == n
    assert schedule.following(end) == schedule.boundary(n + 1) > end
    assert end.time() == anchor.time()
    if unit in ("month", "year"):
        assert end.day == min(anchor.day, calendar.monthrange(end.year, end.month)[1])
    off = end + dt.timedelta(seconds=1)
    assert schedule.index_of(off) is None
    query = "SELECT billing_period_following($1, $2, $3, $4)"
    assert await ledger.pool.fetchval(query, anchor, unit, count, end) == schedule.following(end)
    assert await ledger.pool.fetchval(query, anchor, unit, count, off) is None


def test_month_ends_clamp_from_the_anchor_never_from_the_previous_end() -> None:
    jan31 = periods.Schedule(at(2027, 1, 31, 10), "month", 1)
    assert [jan31.boundary(i).date().isoformat() for i in range(5)] == [
        "2027-01-31",
        "2027-02-28",
        "2027-03-31",
        "2027-04-30",
        "2027-05-31",
    ]
    assert jan31.following(at(2027, 2, 28, 10)) == at(2027, 3, 31, 10)
    leap = periods.Schedule(at(2028, 2, 29), "year", 1)
    assert [leap.boundary(i).date().isoformat() for i in (1, 4)] == ["2029-02-28", "2032-02-29"]
    # A prorated first period ends on the anchor; a full one starts on it.
    prorated = periods.infer(at(2030, 8, 20, 12), at(2030, 9, 1), "month", 1)
    assert prorated.following(at(2030, 9, 1)) == at(2030, 10, 1)
    clamped = periods.infer(at(2027, 2, 28), at(2027, 3, 31), "month", 1)
    assert clamped.following(at(2027, 3, 31)) == at(2027, 4, 30)
