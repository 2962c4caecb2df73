"""Credits that come back while an account owes debt pay the debt first (review finding)."""

from __future__ import annotations

import asyncio

import pytest
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.v1 import billing_service_pb2 as bpb

from tests.harness import Ledger, new_user

pytestmark = pytest.mark.usefixtures("verified")

CREDIT = 1_000_000


async def buy_100(admin: AsyncCreditWalletClient, user: str) -> None:
    await admin.billing.RecordPurchase(
        bpb.RecordPurchaseRequest(
            request_id=f"evt-buy-{user}",
            user_id=user,
            purchase_id=f"cs-{user}",
            payment_id=f"pi-{user}",
            customer_id=f"cus-{user}",
            price_id="price_topup_100",
            credits_micros=100 * CREDIT,
            amount_paid_minor=499,
            currency="usd",
        )
    )


async def refund_all(admin: AsyncCreditWalletClient, user: str) -> None:
    refund = await admin.billing.RecordRefund(
        bpb.RecordRefundRequest(
            request_id=f"evt-refund-{user}", payment_id=f"pi-{user}", amount_refunded_minor=499
        )
    )
    assert refund.clawed_back_micros == 100 * CREDIT
    assert refund.debt_micros == 100 * CREDIT  # every purchased credit was held


@pytest.mark.parametrize("release", ["void", "expiry"])
async def test_released_hold_pays_the_debt_a_refund_left(
    ledger: Ledger, admin: AsyncCreditWalletClient, release: str
) -> None:
    user = new_user()
    await admin.ensure_account(user)  # 5 trial credits
    await buy_100(admin, user)
    hold = await admin.authorize(user, amount_micros=105 * CREDIT, ttl_seconds=60)
    await refund_all(admin, user)
    if release == "void":
        await admin.void(user, hold.hold_id)
    else:
        ledger.clock.advance(seconds=61)
    state = await admin.get_balance(user)
    assert (state.debt_micros, state.held_micros) == (0, 0)
    assert state.available_micros == 5 * CREDIT  # the 105 came back and paid the 100 owed
    spent = await admin.debit(user, amount_micros=5 * CREDIT)
    assert spent.available_micros == 0


async def test_subscription_event_racing_the_checkout_that_links_its_customer_still_grants(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """Review finding: an invoice.paid for a brand-new customer, arriving at the same moment
    as the top-up checkout that links that customer to a user, is granted at once."""
    from creditwallet.v1 import common_pb2 as pb
    from google.protobuf.timestamp_pb2 import Timestamp

    start = int(ledger.clock.now().timestamp())
    pairs = []
    for _ in range(12):
        user = new_user()
        customer = f"cus-{user}"
        purchase = admin.billing.RecordPurchase(
            bpb.RecordPurchaseRequest(
                request_id=f"evt-co-{user}",
                user_id=user,
                purchase_id=f"cs-{user}",
                payment_id=f"pi-{user}",
                customer_id=customer,
                price_id="price_topup_100",
                credits_micros=100 * CREDIT,
                amount_paid_minor=499,
                currency="usd",
            )
        )
        invoice = admin.billing.SyncSubscription(
            bpb.SyncSubscriptionRequest(
                request_id=f"evt-inv-{user}",
                subscription_id=f"sub-{user}",
                customer_id=customer,
                status=pb.SUBSCRIPTION_STATUS_ACTIVE,
                price_id="price_monthly",
                period_credits_micros=250 * CREDIT,
                current_period_start=Timestamp(seconds=start),
                current_period_end=Timestamp(seconds=start + 30 * 86400),
                event_created_at=Timestamp(seconds=start),
                paid_period=bpb.PaidPeriod(
                    period_start=Timestamp(seconds=start),
                    period_end=Timestamp(seconds=start + 30 * 86400),
                    payment_id=f"pi-sub-{user}",
                    amount_paid_minor=999,
                    currency="usd",
                ),
            )
        )
        pairs.append((user, purchase, invoice))
    await asyncio.gather(*(c for _, p, i in pairs for c in (p, i)))
    for user, _, _ in pairs:
        assert (await admin.get_balance(user)).available_micros == 350 * CREDIT, user
