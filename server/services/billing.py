"""BillingService: the payment gateway's provider-neutral RPCs. Validate -> ledger -> convert.

Every mutating call runs under its request_id (the provider's event id) in the billing
idempotency scope, in one transaction with its effect; the effect itself is keyed by the
business object (purchase, subscription period, payment), so two events about one object
apply once. Rollover has no request_id: each expiry and each period's carry-over is recorded
once by its own state, whichever run gets to it.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from creditwallet.core import limits
from creditwallet.server import convert, errors, metrics, validate
from creditwallet.server.clock import Clock
from creditwallet.server.db import Connection
from creditwallet.server.events import store as event_store
from creditwallet.server.events.service import BillingEvents
from creditwallet.server.ledger import (
    idempotency,
    periods,
    purchases,
    refunds,
    rollover,
    subscriptions,
)
from creditwallet.server.ledger.idempotency import Outcome
from creditwallet.server.ledger.types import Subscription
from creditwallet.server.services import Runtime, guard
from creditwallet.v1 import billing_service_pb2 as bpb
from creditwallet.v1 import billing_service_pb2_grpc as bgrpc
from google.protobuf.message import Message

Context = grpc.aio.ServicerContext[Any, Any]
R = TypeVar("R")


class BillingService(BillingEvents, bgrpc.BillingServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    async def RecordPurchase(
        self, request: bpb.RecordPurchaseRequest, context: Context
    ) -> bpb.RecordPurchaseResponse:
        cmd = purchases.PurchaseCommand(
            request_id=validate.request_id(request.request_id),
            user_id=validate.user_id(request.user_id),
            purchase_id=_provider_id(request.purchase_id, "purchase_id", required=True),
            payment_id=_provider_id(request.payment_id, "payment_id"),
            customer_id=_provider_id(request.customer_id, "customer_id"),
            price_id=_provider_id(request.price_id, "price_id"),
            credits_micros=validate.amount(request.credits_micros, "credits_micros"),
            amount_paid_minor=_minor(request.amount_paid_minor, "amount_paid_minor"),
            currency=validate.text(request.currency, "currency", 8),
            priority=validate.priority(request.priority if request.HasField("priority") else None),
        )

        outcome = await self._execute(
            cmd.request_id,
            "RecordPurchase",
            request,
            purchases.PurchaseResult,
            lambda conn, clock: purchases.record(conn, cmd, clock),
        )
        result = outcome.result
        return bpb.RecordPurchaseResponse(
            transaction_id=str(result.transaction_id),
            granted_micros=result.granted_micros,
            already_recorded=result.already_recorded,
            replayed=outcome.replayed,
        )

    async def SyncSubscription(
        self, request: bpb.SyncSubscriptionRequest, context: Context
    ) -> bpb.SyncSubscriptionResponse:
        cmd = _sync_command(request)

        outcome = await self._execute(
            request.request_id,
            "SyncSubscription",
            request,
            subscriptions.SyncResult,
            lambda conn, clock: subscriptions.sync(conn, cmd, clock),
        )
        result = outcome.result
        return bpb.SyncSubscriptionResponse(
            subscription=convert.subscription(result.subscription),
            granted_micros=result.granted_micros,
            pending_user=result.pending_user,
            replayed=outcome.replayed,
        )

    async def RecordPaymentFailure(
        self, request: bpb.RecordPaymentFailureRequest, context: Context
    ) -> bpb.RecordPaymentFailureResponse:
        request_id = validate.request_id(request.request_id)
        sub_id = _provider_id(request.subscription_id, "subscription_id", required=True)
        customer_id = _provider_id(request.customer_id, "customer_id")
        invoice_id = _provider_id(request.invoice_id, "invoice_id")
        event_at = _time(request, "event_created_at", required=True)
        assert event_at is not None

        outcome = await self._execute(
            request_id,
            "RecordPaymentFailure",
            request,
            Subscription,
            functools.partial(_payment_failed, sub_id, customer_id, event_at, invoice_id),
        )
        return bpb.RecordPaymentFailureResponse(
            subscription=convert.subscription(outcome.result), replayed=outcome.replayed
        )

    async def RecordRefund(
        self, request: bpb.RecordRefundRequest, context: Context
    ) -> bpb.RecordRefundResponse:
        request_id = validate.request_id(request.request_id)
        payment_id = _provider_id(request.payment_id, "payment_id", required=True)
        refunded = _minor(request.amount_refunded_minor, "amount_refunded_minor")
        refund_ids = [_provider_id(r, "refund_ids") for r in request.refund_ids]
        if len(refund_ids) > limits.METADATA_KEYS_MAX * 4:
            raise errors.invalid("refund_ids", "too many refund_ids")

        outcome = await self._execute(
            request_id,
            "RecordRefund",
            request,
            refunds.RefundResult,
            lambda conn, clock: refunds.record(conn, payment_id, refunded, refund_ids, clock),
        )
        result = outcome.result
        balances = result.balances
        return bpb.RecordRefundResponse(
            user_id=result.user_id,
            clawed_back_micros=result.clawed_back_micros,
            debt_micros=balances.debt_micros if balances else 0,
            available_micros=balances.available_micros if balances else 0,
            replayed=outcome.replayed,
        )

    async def Rollover(
        self, request: bpb.RolloverRequest, context: Context
    ) -> bpb.RolloverResponse:
        period = periods.parse_month(request.period, self.rt.clock.now())
        try:
            summary = await rollover.run(self.rt.pool, period, self.rt.clock)
        except Exception:
            metrics.ROLLOVERS.labels("failed").inc()
            raise
        metrics.ROLLOVERS.labels("ok").inc()
        return bpb.RolloverResponse(
            period=summary.period,
            accounts_processed=summary.accounts_processed,
            credits_carried_micros=summary.credits_carried_micros,
            credits_expired_micros=summary.credits_expired_micros,
            holds_released=summary.holds_released,
            chunks=summary.chunks,
            periods_settled=summary.periods_settled,
            accounts_capped=summary.accounts_capped,
            credits_capped_micros=summary.credits_capped_micros,
        )

    async def _execute(
        self,
        request_id: str,
        method: str,
        request: Message,
        result_type: type[R],
        work: Callable[[Connection, Clock], Awaitable[R]],
    ) -> Outcome[R]:
        """Run under the event id, in the billing scope (events belong to no account yet)."""
        key = guard(idempotency.BILLING_SCOPE, validate.request_id(request_id), method, request)
        return await self.rt.execute(key, result_type, work)


def _sync_command(request: bpb.SyncSubscriptionRequest) -> subscriptions.SyncCommand:
    validate.request_id(request.request_id)
    status = convert.status_name(request.status)
    credits = request.period_credits_micros
    if credits < 0 or credits > limits.AMOUNT_MICROS_MAX:
        raise errors.invalid("period_credits_micros", "period_credits_micros out of range")
    start = _time(request, "current_period_start")
    end = _time(request, "current_period_end")
    if (start is None) != (end is None) or (start and end and end <= start):
        raise errors.invalid("current_period_end", "a period needs a start before its end")
    event_at = _time(request, "event_created_at", required=True)
    assert event_at is not None
    schedule = _schedule(request.schedule) if request.HasField("schedule") else None
    paid = None
    if request.HasField("paid_period"):
        paid = _paid_period(request.paid_period)
        validate.amount(credits, "period_credits_micros")
    return subscriptions.SyncCommand(
        subscription_id=_provider_id(request.subscription_id, "subscription_id", required=True),
        customer_id=_provider_id(request.customer_id, "customer_id"),
        user_id=validate.user_id(request.user_id) if request.user_id else "",
        status=status,
        price_id=_provider_id(request.price_id, "price_id"),
        period_credits_micros=credits,
        period_start=start,
        period_end=end,
        cancel_at_period_end=request.cancel_at_period_end,
        event_created_at=event_at,
        paid_period=paid,
        schedule=schedule,
    )


_INTERVAL_NAMES = {
    bpb.BILLING_INTERVAL_DAY: "day",
    bpb.BILLING_INTERVAL_WEEK: "week",
    bpb.BILLING_INTERVAL_MONTH: "month",
    bpb.BILLING_INTERVAL_YEAR: "year",
}


def _schedule(schedule: bpb.BillingSchedule) -> periods.Schedule:
    anchor = _time(schedule, "billing_cycle_anchor", required=True)
    assert anchor is not None
    if schedule.interval not in _INTERVAL_NAMES:
        raise errors.invalid("schedule.interval", "interval must be a known BillingInterval")
    if not 1 <= schedule.interval_count <= limits.BILLING_INTERVAL_COUNT_MAX:
        raise errors.invalid(
            "schedule.interval_count",
            f"interval_count must be between 1 and {limits.BILLING_INTERVAL_COUNT_MAX}",
        )
    return periods.Schedule(anchor, _INTERVAL_NAMES[schedule.interval], schedule.interval_count)


def _paid_period(paid: bpb.PaidPeriod) -> subscriptions.PaidPeriod:
    start = _time(paid, "period_start", required=True)
    end = _time(paid, "period_end", required=True)
    assert start is not None
    assert end is not None
    if end <= start:
        raise errors.invalid("paid_period", "a paid period needs a start before its end")
    return subscriptions.PaidPeriod(
        start=start,
        end=end,
        payment_id=_provider_id(paid.payment_id, "payment_id"),
        amount_paid_minor=_minor(paid.amount_paid_minor, "amount_paid_minor"),
        currency=validate.text(paid.currency, "currency", 8),
    )


def _provider_id(value: str, field: str, *, required: bool = False) -> str:
    if not value and not required:
        return ""
    return validate.identifier(value, field, limits.PROVIDER_ID_LENGTH_MAX)


def _minor(value: int, field: str) -> int:
    if not 0 <= value <= limits.AMOUNT_MICROS_MAX:
        raise errors.invalid(field, f"{field} must be between 0 and {limits.AMOUNT_MICROS_MAX}")
    return value


def _time(message: Any, field: str, *, required: bool = False) -> dt.datetime | None:
    if not message.HasField(field):
        if required:
            raise errors.invalid(field, f"{field} is required")
        return None
    return validate.timestamp(getattr(message, field), field)


async def _payment_failed(
    subscription_id: str,
    customer_id: str,
    event_at: dt.datetime,
    invoice_id: str,
    conn: Connection,
    clock: Clock,
) -> Subscription:
    """The failed renewal, and its payment.failed event for the subscription's user."""
    subscription = await subscriptions.payment_failed(
        conn, subscription_id, customer_id, event_at, clock
    )
    if subscription.user_id:
        await event_store.emit(
            conn,
            subscription.user_id,
            "payment.failed",
            clock.now(),
            {
                "reason": "subscription_renewal",
                "subscription_id": subscription_id,
                "invoice_id": invoice_id,
                "customer_id": customer_id,
            },
        )
    return subscription
