"""A paid subscription period sent straight to BillingService.SyncSubscription (no gateway)."""

from __future__ import annotations

import datetime as dt
import uuid

from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.v1 import billing_service_pb2 as bpb
from creditwallet.v1 import common_pb2 as pb
from google.protobuf.timestamp_pb2 import Timestamp

CREDIT = 1_000_000


def ts(value: dt.datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


async def paid(
    admin: AsyncCreditWalletClient,
    sub: str,
    user: str,
    start: dt.datetime,
    end: dt.datetime,
    credits: int,
    anchor: dt.datetime,
    payment_id: str = "",
    amount_paid_minor: int = 999,
) -> bpb.SyncSubscriptionResponse:
    """invoice.paid of [start, end) on a monthly schedule anchored at ``anchor``."""
    return await admin.billing.SyncSubscription(
        bpb.SyncSubscriptionRequest(
            request_id=f"evt_{uuid.uuid4().hex}",
            subscription_id=sub,
            customer_id=f"cus_{sub}",
            user_id=user,
            status=pb.SUBSCRIPTION_STATUS_ACTIVE,
            price_id="price_monthly",
            period_credits_micros=credits * CREDIT,
            current_period_start=ts(start),
            current_period_end=ts(end),
            event_created_at=ts(start),
            schedule=bpb.BillingSchedule(
                billing_cycle_anchor=ts(anchor),
                interval=bpb.BILLING_INTERVAL_MONTH,
                interval_count=1,
            ),
            paid_period=bpb.PaidPeriod(
                period_start=ts(start),
                period_end=ts(end),
                payment_id=payment_id or f"pi_{uuid.uuid4().hex}",
                amount_paid_minor=amount_paid_minor,
                currency="usd",
            ),
        )
    )
