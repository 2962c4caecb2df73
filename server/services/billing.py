"""BillingService: the payment gateway's provider-neutral RPCs. Validate -> ledger -> convert.

Every mutating call runs under its request_id (the provider's event id) in the billing
idempotency scope, in one transaction with its effect; the effect itself is keyed by the
business object (purchase, subscription period, payment), so two events about one object
apply once. Rollover has no request_id: it is exactly-once per account and month by itself.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from creditwallet.core import limits
from creditwallet.server import convert, errors, metrics, validate
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
from creditwallet.server.services import Runtime
from creditwallet.v1 import billing_service_pb2 as bpb
from creditwallet.v1 import billing_service_pb2_grpc as bgrpc
from creditwallet.v1 import common_pb2 as pb
from google.protobuf.message import Message

Context = grpc.aio.ServicerContext[Any, Any]
R = TypeVar("R", bound=Message)


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
        )

        async def work(conn: Connection, now: dt.datetime) -> bpb.RecordPurchaseResponse:
            result = await purchases.record(conn, cmd, now)
            return bpb.RecordPurchaseResponse(
                transaction_id=str(result.transaction_id),
                granted_micros=result.granted_micros,
                already_recorded=result.already_recorded,
            )

        return await self._execute(
            cmd.request_id, "RecordPurchase", request, bpb.RecordPurchaseResponse, work
        )

    async def SyncSubscription(
        self, request: bpb.SyncSubscriptionRequest, context: Context
    ) -> bpb.SyncSubscriptionResponse:
        cmd = _sync_command(request)

        async def work(conn: Connection, now: dt.datetime) -> bpb.SyncSubscriptionResponse:
            result = await subscriptions.sync(conn, cmd, now)
            return bpb.SyncSubscriptionResponse(
                subscription=convert.subscription(result.subscription),
                granted_micros=result.granted_micros,
                pending_user=result.pending_user,
            )

        return await self._execute(
            request.request_id, "SyncSubscription", request, bpb.SyncSubscriptionResponse, work
        )

    async def RecordPaymentFailure(
        self, request: bpb.RecordPaymentFailureRequest, context: Context
    ) -> bpb.RecordPaymentFailureResponse:
        request_id = validate.request_id(request.request_id)
        sub_id = _provider_id(request.subscription_id, "subscription_id", required=True)
        customer_id = _provider_id(request.customer_id, "customer_id")
        _provider_id(request.invoice_id, "invoice_id")
        event_at = _time(request, "event_created_at", required=True)
        assert event_at is not None

        async def work(conn: Connection, now: dt.datetime) -> bpb.RecordPaymentFailureResponse:
            row = await subscriptions.payment_failed(conn, sub_id, customer_id, event_at, now)
            if row["user_id"]:
                await event_store.emit(
                    conn,
                    row["user_id"],
                    "payment.failed",
                    now,
                    {
                        "reason": "subscription_renewal",
                        "subscription_id": sub_id,
                        "invoice_id": request.invoice_id,
                        "customer_id": customer_id,
                    },
                )
            return bpb.RecordPaymentFailureResponse(subscription=convert.subscription(row))

        return await self._execute(
            request_id, "RecordPaymentFailure", request, bpb.RecordPaymentFailureResponse, work
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

        async def work(conn: Connection, now: dt.datetime) -> bpb.RecordRefundResponse:
            result = await refunds.record(conn, payment_id, refunded, refund_ids, now)
            account = result.account
            return bpb.RecordRefundResponse(
                user_id=result.user_id,
                clawed_back_micros=result.clawed_back_micros,
                debt_micros=account.debt_micros if account else 0,
                available_micros=account.available_micros if account else 0,
            )

        return await self._execute(
            request_id, "RecordRefund", request, bpb.RecordRefundResponse, work
        )

    async def Rollover(
        self, request: bpb.RolloverRequest, context: Context
    ) -> bpb.RolloverResponse:
        now = self.rt.clock.now()
        period = periods.parse_month(request.period, now)
        try:
            summary = await rollover.run(self.rt.pool, period, now)
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
        )

    async def _execute(
        self,
        request_id: str,
        method: str,
        request: Message,
        response_type: type[R],
        work: Callable[[Connection, dt.datetime], Awaitable[R]],
    ) -> R:
        """Run under the event id, in the billing scope (events belong to no account yet)."""
        return await self.rt.execute(
            scope=idempotency.BILLING_SCOPE,
            request_id=validate.request_id(request_id),
            method=method,
            request=request,
            response_type=response_type,
            work=work,
        )


_STATUS_NAMES = {
    pb.SUBSCRIPTION_STATUS_ACTIVE: "active",
    pb.SUBSCRIPTION_STATUS_TRIALING: "trialing",
    pb.SUBSCRIPTION_STATUS_PAST_DUE: "past_due",
    pb.SUBSCRIPTION_STATUS_UNPAID: "unpaid",
    pb.SUBSCRIPTION_STATUS_INCOMPLETE: "incomplete",
    pb.SUBSCRIPTION_STATUS_INCOMPLETE_EXPIRED: "incomplete_expired",
    pb.SUBSCRIPTION_STATUS_CANCELED: "canceled",
    pb.SUBSCRIPTION_STATUS_PAUSED: "paused",
}


def _sync_command(request: bpb.SyncSubscriptionRequest) -> subscriptions.SyncCommand:
    validate.request_id(request.request_id)
    if request.status not in _STATUS_NAMES:
        raise errors.invalid("status", "status must be a known SubscriptionStatus")
    credits = request.period_credits_micros
    if credits < 0 or credits > limits.AMOUNT_MICROS_MAX:
        raise errors.invalid("period_credits_micros", "period_credits_micros out of range")
    start = _time(request, "current_period_start")
    end = _time(request, "current_period_end")
    if (start is None) != (end is None) or (start and end and end <= start):
        raise errors.invalid("current_period_end", "a period needs a start before its end")
    event_at = _time(request, "event_created_at", required=True)
    assert event_at is not None
    paid = None
    if request.HasField("paid_period"):
        paid = _paid_period(request.paid_period)
        validate.amount(credits, "period_credits_micros")
    return subscriptions.SyncCommand(
        subscription_id=_provider_id(request.subscription_id, "subscription_id", required=True),
        customer_id=_provider_id(request.customer_id, "customer_id"),
        user_id=validate.user_id(request.user_id) if request.user_id else "",
        status=_STATUS_NAMES[request.status],
        price_id=_provider_id(request.price_id, "price_id"),
        period_credits_micros=credits,
        period_start=start,
        period_end=end,
        cancel_at_period_end=request.cancel_at_period_end,
        event_created_at=event_at,
        paid_period=paid,
    )


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
