"""One-off purchases (top-ups): credits granted once per purchase, whatever delivers it.

The business key is the purchase id (a checkout session), not the event id: Stripe may
deliver ``checkout.session.completed`` and ``.async_payment_succeeded`` for one session, and
redeliver either. A per-purchase lock, taken before any other, serializes every call that
names one purchase id, whichever accounts they name (a forged or misrouted session may name
another user): the second finds the purchase row and changes nothing, so a purchase is
granted once, to the account of the call that recorded it first. The account lock alone
would not do: two calls for two users take two different account locks, both find no
purchase row, and the second's insert would fail on the first's key.
"""

from __future__ import annotations

import dataclasses

from creditwallet.core import limits
from creditwallet.server.clock import Clock
from creditwallet.server.db import Connection
from creditwallet.server.ledger import accounts, customers, lots, referrals, refunds, subscriptions


@dataclasses.dataclass(frozen=True)
class PurchaseCommand:
    request_id: str
    user_id: str
    purchase_id: str
    payment_id: str
    customer_id: str
    price_id: str
    credits_micros: int
    amount_paid_minor: int
    currency: str
    priority: int = limits.LOT_PRIORITY_DEFAULT


@dataclasses.dataclass(frozen=True)
class PurchaseResult:
    transaction_id: int
    granted_micros: int
    already_recorded: bool


# Before the customer's and the account's locks; nothing takes it after them.
PURCHASE_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('purchase:' || $1, 0))"
_FIND = "SELECT transaction_id FROM purchases WHERE purchase_id = $1"
_FIND_PAYMENT = "SELECT transaction_id FROM purchases WHERE payment_id = $1"

_INSERT = """
INSERT INTO purchases (purchase_id, user_id, payment_id, customer_id, price_id, credits_micros,
    amount_paid_minor, currency, lot_id, transaction_id, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
"""


async def record(conn: Connection, cmd: PurchaseCommand, clock: Clock) -> PurchaseResult:
    """Grant a never-expiring top_up lot once per purchase_id, then apply any early refund."""
    await conn.execute(PURCHASE_LOCK, cmd.purchase_id)
    if cmd.customer_id:
        await customers.lock(conn, cmd.customer_id)
        await customers.link(conn, cmd.customer_id, cmd.user_id, clock.now())
        # Subscriptions of this customer that waited for their user get it now
        # (subscription rows are locked before accounts, as SyncSubscription does).
        await subscriptions.adopt_customer(conn, cmd.customer_id, clock)
    locked = await accounts.create_without_trial(conn, cmd.user_id, clock)
    account, now = locked.account, locked.now
    existing = await conn.fetchval(_FIND, cmd.purchase_id)
    if existing is not None:
        return PurchaseResult(existing, 0, already_recorded=True)
    if cmd.payment_id:
        # One payment is granted once, whatever object names it (a second session naming a
        # recorded payment intent is a replay or a forgery, never a second purchase). Under
        # the payment's lock, so two such sessions at once cannot both pass.
        await conn.execute(refunds.PAYMENT_LOCK, cmd.payment_id)
        paid = await conn.fetchval(_FIND_PAYMENT, cmd.payment_id)
        if paid is not None:
            return PurchaseResult(paid, 0, already_recorded=True)
    granted = await lots.grant(
        conn,
        account,
        source="top_up",
        amount_micros=cmd.credits_micros,
        now=now,
        request_id=cmd.request_id,
        metadata={"purchase_id": cmd.purchase_id, "price_id": cmd.price_id},
        grant_key=f"purchase:{cmd.purchase_id}",
        priority=cmd.priority,
    )
    await conn.execute(
        _INSERT,
        cmd.purchase_id,
        cmd.user_id,
        cmd.payment_id,
        cmd.customer_id,
        cmd.price_id,
        cmd.credits_micros,
        cmd.amount_paid_minor,
        cmd.currency,
        granted.lot_id,
        granted.transaction_id,
        now,
    )
    await refunds.apply(conn, cmd.payment_id, clock)
    await referrals.on_first_payment(conn, cmd.user_id, clock)
    return PurchaseResult(granted.transaction_id, cmd.credits_micros, already_recorded=False)
