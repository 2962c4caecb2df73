"""Refunds: claw purchased credits back in proportion to the refunded amount.

Stripe's ``amount_refunded`` is cumulative, so the ledger keeps the largest amount reported
per payment and claws back up to a *target* (credits * refunded // paid), minus what was
already clawed back: a repeated, reordered or partial event can never claw twice. The
refund may arrive before the payment it refunds is recorded; it is kept, and applied when
the purchase or the paid period arrives.

Where the credits come from: the payment's own lot first; what was already spent becomes
debt, which the account's other live lots pay at once in burn-down order
(``lots.settle_debt``); what they cannot cover stays as debt, which later grants pay off
(``lots.grant``) and which blocks debits meanwhile.

What expired unused is not spent: credits the payment's lot lost to expiry (its own expiry,
the carry-over cap) were already taken from the user once, so the clawback never reaches
them. The target is capped at the lot's credits that did not expire (``_EXPIRED``): a refund
of a period whose credits mostly expired claws back only what is left and what was spent.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Sequence

from creditwallet.server.clock import Clock
from creditwallet.server.db import Connection
from creditwallet.server.ledger import accounts, history, lots
from creditwallet.server.ledger.types import Account, Balances

log = logging.getLogger(__name__)

_REMEMBER = """
INSERT INTO payment_refunds (payment_id, amount_refunded_minor, refund_ids, updated_at)
VALUES ($1, $2, $3::text[], $4)
ON CONFLICT (payment_id) DO UPDATE SET
    amount_refunded_minor = GREATEST(payment_refunds.amount_refunded_minor,
                                     EXCLUDED.amount_refunded_minor),
    refund_ids = ARRAY(SELECT DISTINCT unnest(payment_refunds.refund_ids || EXCLUDED.refund_ids)
                       ORDER BY 1),
    updated_at = EXCLUDED.updated_at
"""

# The payment's credits: a purchase, or a granted subscription period.
_PAYMENT = """
SELECT 'purchase' AS kind, purchase_id AS key, NULL::timestamptz AS period_start, user_id,
       credits_micros, amount_paid_minor, clawed_back_micros, lot_id, 'top_up' AS source
FROM purchases WHERE payment_id = $1
UNION ALL
SELECT 'period', subscription_id, period_start, user_id, credits_micros, amount_paid_minor,
       clawed_back_micros, lot_id, 'subscription'
FROM subscription_periods WHERE payment_id = $1 AND lot_id IS NOT NULL
ORDER BY 1, 2, 3
"""

_REFUNDED = "SELECT amount_refunded_minor FROM payment_refunds WHERE payment_id = $1"

# One payment's refund and its purchase (or paid period) may be recorded at the same moment,
# each unable to see the other's uncommitted row: both take this per-payment lock, so the
# second always sees the first (a cycle with an account lock is a deadlock, and retried).
PAYMENT_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('payment:' || $1, 0))"

_SET_PURCHASE = "UPDATE purchases SET clawed_back_micros = $2 WHERE purchase_id = $1"
_SET_PERIOD = """
UPDATE subscription_periods SET clawed_back_micros = $3
WHERE subscription_id = $1 AND period_start = $2
"""

_LIVE_LOT = """
SELECT remaining_micros FROM credit_lots
WHERE user_id = $1 AND lot_id = $2 AND (expires_at IS NULL OR expires_at > $3)
"""

# What the payment's lot lost to expiry so far (the account's due expiries are recorded by
# the lock first). Read from the history: one ``expire`` row per expiry, naming its lot.
_EXPIRED = """
SELECT coalesce(-sum(amount_micros), 0)::bigint FROM credit_transactions
WHERE user_id = $1 AND type = 'expire' AND metadata->>'lot_id' = $2::bigint::text
"""

_LOT_AMOUNT = "SELECT amount_micros FROM credit_lots WHERE user_id = $1 AND lot_id = $2"

_TAKE_FROM_LOT = """
UPDATE credit_lots SET remaining_micros = remaining_micros - $3 WHERE user_id = $1 AND lot_id = $2
"""

_SETTLE = f"""
UPDATE credits SET balance_micros = balance_micros - $2, debt_micros = debt_micros + $3,
    updated_at = $4, last_transaction_id = $5
WHERE user_id = $1
RETURNING {Account.COLUMNS}
"""


@dataclasses.dataclass(frozen=True)
class RefundResult:
    user_id: str
    clawed_back_micros: int
    balances: Balances | None


async def record(
    conn: Connection,
    payment_id: str,
    amount_refunded_minor: int,
    refund_ids: Sequence[str],
    clock: Clock,
) -> RefundResult:
    """Remember the cumulative refunded amount, then claw back what it now requires."""
    await conn.execute(PAYMENT_LOCK, payment_id)
    await conn.execute(_REMEMBER, payment_id, amount_refunded_minor, list(refund_ids), clock.now())
    return await apply(conn, payment_id, clock)


async def apply(conn: Connection, payment_id: str, clock: Clock) -> RefundResult:
    """Bring the clawback of one payment up to its remembered refunded amount."""
    if not payment_id:
        return RefundResult("", 0, None)
    await conn.execute(PAYMENT_LOCK, payment_id)
    refunded = await conn.fetchval(_REFUNDED, payment_id)
    rows = await conn.fetch(_PAYMENT, payment_id)
    if not rows:
        return RefundResult("", 0, None)
    user_id = rows[0]["user_id"]
    locked = await accounts.lock(conn, user_id, clock)
    account, now = locked.account, locked.now
    # Re-read under the account lock: a concurrent refund of the same payment has finished.
    # One payment may have paid for several grants (a subscription invoice's period and its
    # one-off items): the refunded fraction of the payment claws back that fraction of each.
    total = 0
    for row in await conn.fetch(_PAYMENT, payment_id):
        if row["user_id"] != user_id:
            log.error("payment %s names two accounts; refunded for %s only", payment_id, user_id)
            continue
        paid = row["amount_paid_minor"]
        target = row["credits_micros"] * min(refunded or 0, paid) // paid if paid > 0 else 0
        target = min(target, await _not_expired(conn, user_id, row["lot_id"]))
        delta = target - row["clawed_back_micros"]
        if delta <= 0:
            continue
        account = await claw_back(
            conn, account, row["lot_id"], row["source"], delta, now, payment_id=payment_id
        )
        if row["kind"] == "purchase":
            await conn.execute(_SET_PURCHASE, row["key"], target)
        else:
            await conn.execute(_SET_PERIOD, row["key"], row["period_start"], target)
        total += delta
    return RefundResult(user_id, total, Balances.of(account))


async def _not_expired(conn: Connection, user_id: str, lot_id: int) -> int:
    """The lot's credits that did not expire: what a clawback may take or make debt."""
    amount = await conn.fetchval(_LOT_AMOUNT, user_id, lot_id)
    expired = await conn.fetchval(_EXPIRED, user_id, lot_id)
    return int(amount) - int(expired)


async def claw_back(
    conn: Connection,
    account: Account,
    lot_id: int,
    source: str,
    amount_micros: int,
    now: dt.datetime,
    *,
    payment_id: str,
) -> Account:
    """Take amount back from its lot; what was spent becomes debt, which the account's
    other live credits then pay at once (``lots.settle_debt``, the one debt mechanism)."""
    user_id = account.user_id
    in_lot = await conn.fetchval(_LIVE_LOT, user_id, lot_id, now) or 0
    from_lot = min(in_lot, amount_micros)
    if from_lot:
        await conn.execute(_TAKE_FROM_LOT, user_id, lot_id, from_lot)
    tx_id = await history.append(
        conn,
        user_id,
        "clawback",
        -amount_micros,
        account.balance_micros - amount_micros,
        now,
        source=source,
        metadata={
            "payment_id": payment_id,
            "lot_id": str(lot_id),
            "from_lot_micros": str(from_lot),
        },
    )
    row = await conn.fetchrow(_SETTLE, user_id, amount_micros, amount_micros - from_lot, now, tx_id)
    assert row is not None
    return await lots.settle_debt(conn, Account.from_row(row), now)
