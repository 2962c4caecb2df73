"""VerifyLedger, invariant 5: time, locks and expiry agree.

Why a check of its own: the other invariants add amounts up, and an expired credit spent by a
write that read the clock too early adds up perfectly. What gives it away is time: a lot
consumed by a debit dated at or after the lot's expiry, a consumption committed after the
lot's expiry was recorded, an account whose history goes back in time, or a lot that still
holds credits although the account was written after it expired. Each statement below finds
one of those; together they catch the class of bug, not one instance of it.

A capture spends what its hold reserved: the credits left their lots when the hold was
placed, so for a capture the moment that counts is the hold's creation, not the capture's.
"""

from __future__ import annotations

from creditwallet.server.db import Connection

INVARIANT = 5

# A debit (or the hold a capture settles) dated at or after the expiry of a lot it consumed.
_SPENT_AFTER_EXPIRY = """
SELECT c.user_id, c.transaction_id, c.lot_id, l.expires_at,
       coalesce(h.created_at, t.created_at) AS spent_at
FROM lot_consumptions c
JOIN credit_transactions t ON t.user_id = c.user_id AND t.transaction_id = c.transaction_id
JOIN credit_lots l ON l.user_id = c.user_id AND l.lot_id = c.lot_id
LEFT JOIN holds h ON h.user_id = t.user_id AND h.hold_id = t.hold_id
WHERE l.expires_at IS NOT NULL AND coalesce(h.created_at, t.created_at) >= l.expires_at
ORDER BY c.user_id, c.transaction_id
LIMIT $1
"""

# A debit (not a capture: its credits were reserved earlier) committed after its lot's expiry
# had been recorded. Only a lot's own expiry counts; a carry-over cap expires part of a live lot.
_SPENT_AFTER_EXPIRY_ROW = """
WITH expired AS (
    SELECT user_id, (metadata->>'lot_id')::bigint AS lot_id, min(transaction_id) AS expired_by
    FROM credit_transactions
    WHERE type = 'expire' AND coalesce(metadata->>'reason', '') <> 'carry_over_cap'
    GROUP BY user_id, (metadata->>'lot_id')::bigint
)
SELECT c.user_id, c.transaction_id, c.lot_id, e.expired_by
FROM lot_consumptions c
JOIN expired e ON e.user_id = c.user_id AND e.lot_id = c.lot_id
JOIN credit_transactions t ON t.user_id = c.user_id AND t.transaction_id = c.transaction_id
WHERE c.transaction_id > e.expired_by AND t.hold_id IS NULL
ORDER BY c.user_id, c.transaction_id
LIMIT $1
"""

# Per account, the history's times never go back in transaction_id (commit) order.
_TIME_GOES_BACK = """
SELECT user_id, transaction_id, created_at, previous_at FROM (
    SELECT user_id, transaction_id, created_at,
           lag(created_at) OVER (PARTITION BY user_id ORDER BY transaction_id) AS previous_at
    FROM credit_transactions
) history
WHERE created_at < previous_at
ORDER BY user_id, transaction_id
LIMIT $1
"""

# Every write sweeps the account first and expires credits given back to an expired lot at
# once, so after the account's last write no lot that had expired by then holds credits.
_LEFT_IN_EXPIRED_LOT = """
SELECT l.user_id, l.lot_id, l.remaining_micros, l.expires_at, c.updated_at
FROM credit_lots l JOIN credits c ON c.user_id = l.user_id
WHERE l.remaining_micros > 0 AND l.expires_at <= c.updated_at
ORDER BY l.user_id, l.lot_id
LIMIT $1
"""


async def violations(conn: Connection, cap: int) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for r in await conn.fetch(_SPENT_AFTER_EXPIRY, cap):
        found.append(
            (
                r["user_id"],
                f"transaction {r['transaction_id']} spent lot {r['lot_id']} at "
                f"{r['spent_at'].isoformat()}, at or after its expiry "
                f"{r['expires_at'].isoformat()}",
            )
        )
    for r in await conn.fetch(_SPENT_AFTER_EXPIRY_ROW, cap):
        found.append(
            (
                r["user_id"],
                f"transaction {r['transaction_id']} spent lot {r['lot_id']} after its expiry "
                f"was recorded by transaction {r['expired_by']}",
            )
        )
    for r in await conn.fetch(_TIME_GOES_BACK, cap):
        found.append(
            (
                r["user_id"],
                f"transaction {r['transaction_id']} is dated {r['created_at'].isoformat()}, "
                f"before the transaction committed ahead of it ({r['previous_at'].isoformat()})",
            )
        )
    for r in await conn.fetch(_LEFT_IN_EXPIRED_LOT, cap):
        found.append(
            (
                r["user_id"],
                f"lot {r['lot_id']} still holds {r['remaining_micros']} micros although it "
                f"expired at {r['expires_at'].isoformat()} and the account was written at "
                f"{r['updated_at'].isoformat()}",
            )
        )
    return found
