"""VerifyLedger, invariant 8: a refund claws back only what was left and what was spent.

A clawback takes what it can from the refunded payment's own lot; only the rest becomes debt,
and that rest must be credits the lot gave out (spent by debits, or reserved by holds), never
credits it lost to expiry. So, per lot, the debt its clawbacks created (each ``clawback``
row's amount minus its ``from_lot_micros``) never exceeds what was ever consumed from it
plus what holds ever reserved from it. Both sides only grow, so a later reversal or void
cannot make a correct clawback look wrong.
"""

from __future__ import annotations

from creditwallet.server.db import Connection

INVARIANT = 8

_DEBT_ABOVE_SPENT = """
WITH debt AS (
    SELECT user_id, (metadata->>'lot_id')::bigint AS lot_id,
           sum(-amount_micros - coalesce((metadata->>'from_lot_micros')::bigint, 0))::bigint
               AS debt
    FROM credit_transactions WHERE type = 'clawback' AND metadata ? 'lot_id'
    GROUP BY 1, 2
), gave AS (
    SELECT d.user_id, d.lot_id, d.debt,
           ((SELECT coalesce(sum(c.amount_micros), 0) FROM lot_consumptions c
             WHERE c.user_id = d.user_id AND c.lot_id = d.lot_id)
          + (SELECT coalesce(sum(h.amount_micros), 0) FROM hold_lots h
             WHERE h.user_id = d.user_id AND h.lot_id = d.lot_id))::bigint AS gave
    FROM debt d WHERE d.debt > 0
)
SELECT user_id, lot_id, debt, gave FROM gave WHERE debt > gave LIMIT $1
"""


async def violations(conn: Connection, cap: int) -> list[tuple[str, str]]:
    """(user_id, detail) of every lot whose clawbacks made more debt than it gave out."""
    return [
        (
            r["user_id"],
            f"clawbacks of lot {r['lot_id']} made {r['debt']} micros of debt, but only "
            f"{r['gave']} were spent or held from it",
        )
        for r in await conn.fetch(_DEBT_ABOVE_SPENT, cap)
    ]
