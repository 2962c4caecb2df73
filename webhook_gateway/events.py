"""Stripe events -> typed BillingService requests (docs/billing.md), one function per event family.

Both API shapes are accepted: in the current one a subscription's period lives on its items
and an invoice names its subscription under ``parent.subscription_details``; older versions
put them at the top level. A renewal's period is the invoice *line's* ``period``.
Each mapping returns a ``Call`` or, for an event the ledger does not need, an ``Ignored``.

Which invoice lines bill a period: only a subscription item's own line (``parent.type``
``subscription_item_details``, or the legacy ``type: subscription``) that is not a proration.
Proration lines (an upgrade's or downgrade's credit and debit for the rest of a period, in
either parent branch) and one-off invoice items never do, so an invoice made only of them
(``always_invoice`` on a plan change) grants nothing. The one allowance: on the invoice that
creates the subscription, a subscription item's line is the first (possibly prorated)
period whatever its proration flag, since there is no earlier period it could adjust.
A period billed at 0 with nothing paid (a trial) is not a paid period either.

One-off items on a subscription invoice (a subscription checkout may sell one-time prices
too: they become invoice items on its first invoice) are not part of any period: each
catalog top-up price among them grants a top-up purchase, keyed by the invoice, once,
whichever of the checkout and ``invoice.paid`` maps it first (both read the same invoice).

The ledger computes lot expiries from the subscription's billing schedule (anchor, interval,
interval count): subscription events carry it; for invoices it is read from Stripe's API
(the ledger falls back on the schedule it recorded, or the one the period implies).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping
from typing import Any, Final

from creditwallet.core import limits
from creditwallet.gateway import catalog
from creditwallet.gateway.stripe_api import StripeApi
from creditwallet.v1 import billing_service_pb2 as bpb
from creditwallet.v1 import common_pb2 as pb
from creditwallet.v1 import events_pb2 as epb
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message

log = logging.getLogger(__name__)

# Stripe's subscription statuses are the enum's names in lower case ("past_due" is
# SUBSCRIPTION_STATUS_PAST_DUE): the table is the proto's, read off it, not written again.
STATUS: Final = {
    name.removeprefix("SUBSCRIPTION_STATUS_").lower(): value
    for name, value in pb.SubscriptionStatus.items()
    if value != pb.SUBSCRIPTION_STATUS_UNSPECIFIED
}
HANDLED = (
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "invoice.paid",
    "invoice.payment_failed",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "charge.refunded",
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
)


INTERVALS = {
    "day": bpb.BILLING_INTERVAL_DAY,
    "week": bpb.BILLING_INTERVAL_WEEK,
    "month": bpb.BILLING_INTERVAL_MONTH,
    "year": bpb.BILLING_INTERVAL_YEAR,
}
# Invoices that may bill a subscription period ("" and "subscription": older API versions).
# Others (manual, upcoming, subscription_threshold, automatic_pending_invoice_item_invoice,
# quote_accept) bill something else: they never grant a period.
PERIOD_REASONS = ("subscription_create", "subscription_cycle", "subscription_update")
LEGACY_PERIOD_REASONS = ("subscription", "")


@dataclasses.dataclass(frozen=True)
class Call:
    """One RPC; ``also``: the calls the same event needs after it (each idempotent)."""

    method: str
    request: Message
    also: tuple[Call, ...] = ()


@dataclasses.dataclass(frozen=True)
class Ignored:
    reason: str


class Mapper:
    """``livemode``: the mode of the Stripe account this gateway serves; an event of the other
    mode grants nothing."""

    def __init__(
        self, api: StripeApi, prices: Mapping[str, catalog.CatalogPrice], *, livemode: bool
    ) -> None:
        self.api = api
        self.prices = prices
        self.livemode = livemode

    async def map(self, event: Mapping[str, Any]) -> Call | Ignored:
        kind = event.get("type")
        obj = event["data"]["object"]
        if kind in ("checkout.session.completed", "checkout.session.async_payment_succeeded"):
            return await self._checkout(event, obj)
        if kind == "invoice.paid":
            return await self._invoice_paid(event, obj)
        if kind == "invoice.payment_failed":
            return _payment_failed(event, obj)
        if kind in (
            "customer.subscription.created",
            "customer.subscription.updated",
            "customer.subscription.deleted",
        ):
            return await self._subscription(event, obj)
        if kind == "charge.refunded":
            return _refund(event, obj)
        if kind in ("payment_intent.succeeded", "payment_intent.payment_failed"):
            return _auto_recharge_payment(event, obj)
        return Ignored(f"event type {kind} is not handled")

    async def credits(self, price: Any) -> catalog.CatalogPrice:
        """A price's catalog entry (there must be one), cross-checked with Stripe's metadata."""
        price_id = price if isinstance(price, str) else str(price.get("id", ""))
        from_api = catalog.from_price_object(price) if isinstance(price, dict) else None
        if from_api is None:
            fetched = await self.api.price(price_id)
            from_api = catalog.from_price_object(fetched) if fetched else None
        return catalog.decide(price_id, from_api, self.prices)

    async def _checkout(self, event: Mapping[str, Any], obj: Mapping[str, Any]) -> Call | Ignored:
        # A subscription starting with a free trial completes with nothing to pay; its
        # checkout must still link the user, or the first paid period would find nobody.
        free_trial = obj.get("mode") == "subscription" and (
            obj.get("payment_status") == "no_payment_required"
        )
        if obj.get("payment_status") != "paid" and not free_trial:
            return Ignored("checkout session not paid yet")
        user = obj.get("client_reference_id") or (obj.get("metadata") or {}).get("user_id")
        if not user:
            log.error("paid checkout without a user", extra={"session": obj.get("id")})
            return Ignored("checkout session names no user")
        items = await self.api.session_line_items(obj["id"])
        if items is None:
            # Stripe cannot say what was bought: the session's own word, which the catalog
            # and the amount paid must both bear out below.
            hint = (obj.get("metadata") or {}).get("price_id")
            if not hint:
                raise catalog.PriceError(
                    "the session's line items are unknown (STRIPE_SECRET_KEY is unset, or "
                    "Stripe did not answer) and its metadata names no price_id: a locally "
                    "sent checkout must set metadata.price_id to a price of the catalog"
                )
            items = [{"price": hint, "quantity": 1}]
        total, price_id = 0, ""
        subscribed = obj.get("mode") == "subscription"
        bought: list[tuple[catalog.CatalogPrice, int]] = []
        for item in items:
            found = await self.credits(item["price"])
            quantity = _quantity(item)
            bought.append((found, quantity))
            if subscribed and found.kind != "subscription":
                continue  # a one-off item: granted from the invoice (_one_off_purchase)
            total += found.credits_micros * quantity
            price = item["price"]
            price_id = price if isinstance(price, str) else str(price["id"])
        if subscribed:
            # The first period's amount is its invoice's to state (a trial pays nothing);
            # the currency and the mode are the session's.
            charged = sum(price.unit_amount * quantity for price, quantity in bought)
            paid = _paid(event, obj, amount_subtotal=charged)
            catalog.check_paid(paid, bought, livemode=self.livemode)
            return await self._checkout_subscription(event, obj, str(user), price_id, total)
        catalog.check_paid(_paid(event, obj), bought, livemode=self.livemode)
        return Call(
            "RecordPurchase",
            bpb.RecordPurchaseRequest(
                request_id=event["id"],
                user_id=user,
                purchase_id=obj["id"],
                payment_id=obj.get("payment_intent") or "",
                customer_id=obj.get("customer") or "",
                price_id=price_id,
                credits_micros=total,
                amount_paid_minor=int(obj.get("amount_total") or 0),
                currency=obj.get("currency") or "",
                priority=catalog.lot_priority(bought),
            ),
        )

    async def _checkout_subscription(
        self, event: Mapping[str, Any], obj: Mapping[str, Any], user: str, price: str, total: int
    ) -> Call:
        request = bpb.SyncSubscriptionRequest(
            request_id=event["id"],
            subscription_id=obj["subscription"],
            customer_id=obj.get("customer") or "",
            user_id=user,
            status=pb.SUBSCRIPTION_STATUS_ACTIVE,
            price_id=price,
            period_credits_micros=total,
            event_created_at=_ts(event["created"]),
        )
        invoice, sub = await asyncio.gather(
            self.api.invoice(obj["invoice"]) if obj.get("invoice") else _nothing(),
            self.api.subscription(obj["subscription"]),
        )
        if obj.get("payment_status") == "no_payment_required":
            request.status = pb.SUBSCRIPTION_STATUS_TRIALING  # a free trial's checkout
        lines = _period_lines(invoice) if invoice else []
        if invoice is not None and lines and not _is_trial(invoice, lines, sub):
            line = lines[0]
            _set_period(request, line["period"]["start"], line["period"]["end"])
            request.paid_period.CopyFrom(_paid_period(invoice, line))
            schedule = _schedule(sub, line)
            if schedule is not None:
                request.schedule.CopyFrom(schedule)
        one_off = None
        if invoice is not None:
            one_off = await self._one_off_purchase(event, invoice, user)
        elif obj.get("invoice"):
            log.warning("checkout %s: invoice unreadable; invoice.paid grants", obj.get("id"))
        return Call("SyncSubscription", request, also=(one_off,) if one_off else ())

    async def _one_off_purchase(
        self, event: Mapping[str, Any], inv: Mapping[str, Any], user: str
    ) -> Call | None:
        """The top-up purchase of an invoice's one-off items (module docstring), if any."""
        total, price_id = 0, ""
        for line in _one_off_lines(inv):
            line_price = _line_price_id(line)
            if line_price not in self.prices:
                log.info("invoice %s: one-off price %s grants no credits", inv["id"], line_price)
                continue
            found = await self.credits(_line_price(line))
            if found.kind != "top_up":
                log.warning("invoice %s: a recurring price as a one-off item", inv["id"])
                continue
            total += found.credits_micros * _quantity(line)
            price_id = line_price
        if total == 0:
            return None
        if not user:
            log.error(
                "invoice %s: one-off items for an unknown user; its checkout grants them",
                inv["id"],
            )
            return None
        payment = _payment_of(inv)
        return Call(
            "RecordPurchase",
            bpb.RecordPurchaseRequest(
                request_id=f"{event['id']}:one-off",
                user_id=user,
                purchase_id=str(inv["id"]),
                payment_id=payment,
                customer_id=inv.get("customer") or "",
                price_id=price_id,
                credits_micros=total,
                amount_paid_minor=int(inv.get("amount_paid") or 0),
                currency=inv.get("currency") or "",
            ),
        )

    async def _invoice_paid(
        self, event: Mapping[str, Any], inv: Mapping[str, Any]
    ) -> Call | Ignored:
        sub_id = _invoice_subscription(inv)
        if not sub_id:
            return Ignored("invoice is not a subscription invoice")
        reason = str(inv.get("billing_reason") or "")
        if reason not in PERIOD_REASONS + LEGACY_PERIOD_REASONS:
            return Ignored(f"invoice billing_reason {reason} bills no subscription period")
        lines = _period_lines(inv)
        details = (inv.get("parent") or {}).get("subscription_details") or {}
        user = str((details.get("metadata") or {}).get("user_id", ""))
        if not lines:
            one_off = await self._one_off_purchase(event, inv, user)
            if one_off is not None:
                return one_off
            return Ignored("invoice bills no new subscription period (prorations or items only)")
        # Refunds find a period by its payment; ask Stripe when the event lacks it.
        found, sub, fetched = await asyncio.gather(
            self._credits_of(lines),
            self.api.subscription(sub_id),
            _nothing() if _payment_of(inv) else self.api.invoice(inv["id"]),
        )
        if _is_trial(inv, lines, sub):
            return Ignored("a trial period is not a paid period")
        line = lines[0]
        request = bpb.SyncSubscriptionRequest(
            request_id=event["id"],
            subscription_id=sub_id,
            customer_id=inv.get("customer") or "",
            user_id=user,
            status=pb.SUBSCRIPTION_STATUS_ACTIVE,
            price_id=_line_price_id(line),
            period_credits_micros=found,
            event_created_at=_ts(event["created"]),
        )
        _set_period(request, line["period"]["start"], line["period"]["end"])
        if not _payment_of(inv):
            if fetched is not None and _payment_of(fetched):
                inv = fetched
            else:
                log.warning("invoice %s: payment unknown; its refunds cannot claw back", inv["id"])
        request.paid_period.CopyFrom(_paid_period(inv, line))
        schedule = _schedule(sub, line)
        if schedule is not None:
            request.schedule.CopyFrom(schedule)
        one_off = await self._one_off_purchase(event, inv, user)
        return Call("SyncSubscription", request, also=(one_off,) if one_off else ())

    async def _credits_of(self, lines: list[Mapping[str, Any]]) -> int:
        """The period's credits: each of its item lines' price credits times its quantity."""
        total = 0
        for line in lines:
            found = await self.credits(_line_price(line))
            total += found.credits_micros * int(line.get("quantity") or 1)
        return total

    async def _subscription(self, event: Mapping[str, Any], sub: Mapping[str, Any]) -> Call:
        item = ((sub.get("items") or {}).get("data") or [{}])[0]
        price = item.get("price") or sub.get("plan") or ""
        found = await self.credits(price) if price else None
        start = item.get("current_period_start") or sub.get("current_period_start")
        end = item.get("current_period_end") or sub.get("current_period_end")
        status = "canceled" if event["type"].endswith(".deleted") else sub.get("status", "")
        request = bpb.SyncSubscriptionRequest(
            request_id=event["id"],
            subscription_id=sub["id"],
            customer_id=sub.get("customer") or "",
            user_id=(sub.get("metadata") or {}).get("user_id", ""),
            status=STATUS.get(status, pb.SUBSCRIPTION_STATUS_UNSPECIFIED),
            price_id=price if isinstance(price, str) else str(price.get("id", "")),
            period_credits_micros=found.credits_micros if found else 0,
            cancel_at_period_end=bool(sub.get("cancel_at_period_end")),
            event_created_at=_ts(event["created"]),
        )
        if start and end:
            _set_period(request, start, end)
        schedule = _schedule(sub, None)
        if schedule is not None:
            request.schedule.CopyFrom(schedule)
        return Call("SyncSubscription", request)


def _quantity(item: Mapping[str, Any]) -> int:
    quantity = item.get("quantity", 1)
    if type(quantity) is not int or not 1 <= quantity <= limits.QUANTITY_MAX:
        raise catalog.PaymentMismatch("quantity", f"line item quantity {quantity!r}")
    return quantity


def _paid(
    event: Mapping[str, Any], session: Mapping[str, Any], *, amount_subtotal: int | None = None
) -> catalog.Paid:
    """The money a checkout states; a field missing or of the wrong type is a mismatch."""
    currency = session.get("currency")
    subtotal = session.get("amount_subtotal") if amount_subtotal is None else amount_subtotal
    livemode = session.get("livemode")
    if not isinstance(currency, str):
        raise catalog.PaymentMismatch("currency", "the session states no currency")
    if isinstance(subtotal, bool) or not isinstance(subtotal, int):
        raise catalog.PaymentMismatch("amount", "the session states no amount_subtotal")
    if not isinstance(livemode, bool) or event.get("livemode") is not livemode:
        raise catalog.PaymentMismatch("livemode", "the event and its session disagree on livemode")
    return catalog.Paid(currency, subtotal, livemode is True)


def _payment_failed(event: Mapping[str, Any], inv: Mapping[str, Any]) -> Call | Ignored:
    sub_id = _invoice_subscription(inv)
    if not sub_id:
        return Ignored("invoice is not a subscription invoice")
    return Call(
        "RecordPaymentFailure",
        bpb.RecordPaymentFailureRequest(
            request_id=event["id"],
            subscription_id=sub_id,
            customer_id=inv.get("customer") or "",
            invoice_id=inv.get("id") or "",
            event_created_at=_ts(event["created"]),
        ),
    )


def _refund(event: Mapping[str, Any], charge: Mapping[str, Any]) -> Call | Ignored:
    payment = charge.get("payment_intent")
    if not payment:
        return Ignored("charge has no payment intent")
    refunds = (charge.get("refunds") or {}).get("data") or []
    return Call(
        "RecordRefund",
        bpb.RecordRefundRequest(
            request_id=event["id"],
            payment_id=payment if isinstance(payment, str) else payment["id"],
            amount_refunded_minor=int(charge.get("amount_refunded") or 0),
            refund_ids=[r["id"] for r in refunds if isinstance(r, dict) and r.get("id")],
        ),
    )


# The metadata the ledger puts on the PaymentIntents of its auto-recharges.
AUTO_RECHARGE_ATTEMPT = "creditwallet_attempt_id"
AUTO_RECHARGE_USER = "creditwallet_user_id"


def _auto_recharge_payment(event: Mapping[str, Any], intent: Mapping[str, Any]) -> Call | Ignored:
    """An auto-recharge PaymentIntent's outcome; other intents (checkouts) are not ours here."""
    metadata = intent.get("metadata") or {}
    attempt, user = metadata.get(AUTO_RECHARGE_ATTEMPT), metadata.get(AUTO_RECHARGE_USER)
    if not attempt or not user:
        return Ignored("payment intent is not an auto-recharge")
    error = intent.get("last_payment_error") or {}
    return Call(
        "RecordAutoRechargePayment",
        epb.RecordAutoRechargePaymentRequest(
            request_id=event["id"],
            payment_intent_id=intent["id"],
            attempt_id=str(attempt),
            user_id=str(user),
            succeeded=event["type"] == "payment_intent.succeeded",
            amount_received_minor=int(intent.get("amount_received") or 0),
            currency=intent.get("currency") or "",
            failure_code=str(error.get("decline_code") or error.get("code") or "")[:100],
            failure_message=str(error.get("message") or "")[:500],
        ),
    )


def _invoice_subscription(inv: Mapping[str, Any]) -> str:
    details = (inv.get("parent") or {}).get("subscription_details") or {}
    sub = details.get("subscription") or inv.get("subscription") or ""
    return sub if isinstance(sub, str) else str(sub.get("id", ""))


def _period_lines(inv: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The invoice's lines that bill a subscription period (module docstring); never a
    proration, never an invoice item, and all of one period (the first such line's)."""
    creates = inv.get("billing_reason") == "subscription_create"
    lines = (inv.get("lines") or {}).get("data") or []
    found: list[tuple[bool, Mapping[str, Any]]] = []
    for line in lines:
        if not isinstance(line, dict) or not isinstance(line.get("period"), dict):
            continue
        parent = line.get("parent") or {}
        if parent.get("type") == "subscription_item_details":
            proration = bool((parent.get("subscription_item_details") or {}).get("proration"))
        elif not parent and line.get("type") == "subscription":
            proration = bool(line.get("proration"))
        else:
            continue
        if proration and not creates:
            continue
        found.append((proration, line))
    # On the creating invoice, a line that is not a proration comes first, if there is one.
    ordered = [line for _, line in sorted(found, key=lambda f: f[0])]
    if not ordered:
        return []
    period = ordered[0]["period"]
    return [line for line in ordered if line["period"] == period]


def _one_off_lines(inv: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The invoice's one-off items: invoice item lines that are not prorations."""
    found: list[Mapping[str, Any]] = []
    for line in (inv.get("lines") or {}).get("data") or []:
        if not isinstance(line, dict):
            continue
        parent = line.get("parent") or {}
        if parent.get("type") == "invoice_item_details":
            proration = bool((parent.get("invoice_item_details") or {}).get("proration"))
        elif not parent and line.get("type") == "invoiceitem":
            proration = bool(line.get("proration"))
        else:
            continue
        if not proration:
            found.append(line)
    return found


def _is_trial(
    inv: Mapping[str, Any], lines: list[Mapping[str, Any]], sub: Mapping[str, Any] | None
) -> bool:
    """A trial's period: inside the subscription's trial, or billed 0 with nothing paid."""
    period = lines[0]["period"]
    trial_start, trial_end = (sub or {}).get("trial_start"), (sub or {}).get("trial_end")
    if (
        isinstance(trial_start, int)
        and isinstance(trial_end, int)
        and trial_start <= int(period["start"])
        and int(period["end"]) <= trial_end
    ):
        return True
    unpaid = int(inv.get("amount_paid") or 0) == 0
    return unpaid and all(int(line.get("amount") or 0) == 0 for line in lines)


def _schedule(
    sub: Mapping[str, Any] | None, line: Mapping[str, Any] | None
) -> bpb.BillingSchedule | None:
    """The subscription's billing schedule: its anchor and the billed item's interval."""
    if not sub or not isinstance(sub.get("billing_cycle_anchor"), int):
        return None
    items = [i for i in (sub.get("items") or {}).get("data") or [] if isinstance(i, dict)]
    wanted = ""
    if line is not None:
        details = (line.get("parent") or {}).get("subscription_item_details") or {}
        wanted = str(details.get("subscription_item") or line.get("subscription_item") or "")
    item = next((i for i in items if wanted and i.get("id") == wanted), items[0] if items else {})
    price = item.get("price") or item.get("plan") or sub.get("plan") or {}
    if not isinstance(price, dict):
        return None
    recurring = price.get("recurring")
    terms: Mapping[str, Any] = recurring if isinstance(recurring, dict) else price
    interval = terms.get("interval")
    count = terms.get("interval_count") or 1
    if interval not in INTERVALS or not isinstance(count, int):
        return None
    if not 1 <= count <= limits.BILLING_INTERVAL_COUNT_MAX:
        log.warning("subscription %s: interval_count %s out of range", sub.get("id"), count)
        return None
    return bpb.BillingSchedule(
        billing_cycle_anchor=_ts(sub["billing_cycle_anchor"]),
        interval=INTERVALS[interval],
        interval_count=count,
    )


async def _nothing() -> None:
    return None


def _line_price(line: Mapping[str, Any]) -> Any:
    details = (line.get("pricing") or {}).get("price_details") or {}
    return details.get("price") or line.get("price") or line.get("plan") or ""


def _line_price_id(line: Mapping[str, Any]) -> str:
    price = _line_price(line)
    return price if isinstance(price, str) else str(price.get("id", ""))


def _payment_of(inv: Mapping[str, Any]) -> str:
    """The invoice's payment intent: top-level in older API versions, else under payments."""
    payment = inv.get("payment_intent") or ""
    if not payment:
        for entry in (inv.get("payments") or {}).get("data") or []:
            payment = (entry.get("payment") or {}).get("payment_intent") or payment
    return payment if isinstance(payment, str) else str(payment.get("id", ""))


def _paid_period(inv: Mapping[str, Any], line: Mapping[str, Any]) -> bpb.PaidPeriod:
    return bpb.PaidPeriod(
        period_start=_ts(line["period"]["start"]),
        period_end=_ts(line["period"]["end"]),
        payment_id=_payment_of(inv),
        amount_paid_minor=int(inv.get("amount_paid") or 0),
        currency=inv.get("currency") or "",
    )


def _set_period(request: bpb.SyncSubscriptionRequest, start: int, end: int) -> None:
    request.current_period_start.CopyFrom(_ts(start))
    request.current_period_end.CopyFrom(_ts(end))


def _ts(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=int(seconds))
