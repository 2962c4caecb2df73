"""VerifyLedger, invariant 5: time, locks, expiry and the replies agree.

Why a check of its own: the other invariants add amounts up, and an expired credit spent by a
write that read the clock too early adds up perfectly. What gives it away is time: a lot
consumed by a debit dated at or after the lot's expiry, a consumption committed after the
lot's expiry was recorded, an account whose history goes back in time, or a lot that still
holds credits although the account was written after it expired, or credits that came back to
an expired lot and were expired only by a later write. Each statement below finds
one of those; together they catch the class of bug, not one instance of it.

A capture spends what its hold reserved: the credits left their lots when the hold was
placed, so for a capture the moment that counts is the hold's creation, not the capture's.

Replies: every result stored under a request_id reports the account's figures right after
the request; they must be the history's, at the history row the result names (the account's
newest row then), and available must be balance less held.
"""

from __future__ import annotations

from creditwallet.server.db import Connection

INVARIANT = 5

# A debit (or the hold a capture settles) dated at or after the expiry of a lot it consumed,
# as that expiry stood then: a subscription lot's expiry may be moved later (an
# ``expiry_change`` row, after which the moved expiry holds), so what counts for a consumption
# is the expiry before the first change committed after it (for a capture: after its hold was
# placed), else the lot's own.
_SPENT_AFTER_EXPIRY = """
WITH spent AS (
    SELECT c.user_id, c.transaction_id, c.lot_id, l.expires_at,
           coalesce(h.created_at, t.created_at) AS spent_at, h.created_at AS held_at
    FROM lot_consumptions c
    JOIN credit_transactions t ON t.user_id = c.user_id AND t.transaction_id = c.transaction_id
    JOIN credit_lots l ON l.user_id = c.user_id AND l.lot_id = c.lot_id
    LEFT JOIN holds h ON h.user_id = t.user_id AND h.hold_id = t.hold_id
    WHERE l.expires_at IS NOT NULL
), judged AS (
    SELECT s.*, coalesce((
        SELECT (x.metadata->>'previous_expires_at')::timestamptz FROM credit_transactions x
        WHERE x.user_id = s.user_id AND x.type = 'expiry_change'
          AND (x.metadata->>'lot_id')::bigint = s.lot_id
          AND CASE WHEN s.held_at IS NULL THEN x.transaction_id > s.transaction_id
                   ELSE x.created_at > s.held_at END
        ORDER BY x.transaction_id LIMIT 1), s.expires_at) AS in_force
    FROM spent s
)
SELECT user_id, transaction_id, lot_id, in_force AS expires_at, spent_at FROM judged
WHERE spent_at >= in_force
ORDER BY user_id, transaction_id
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


# Credits given back to a lot that has expired expire in the give-back's own write. A lot's
# first expiry may be recorded by any later sweep; a second expire row of the same lot can only
# follow credits that came back, and must then share its database transaction with the
# give-back: a reversal, a capture (a debit settling a hold), or the release of a hold that
# reserved from the lot (voided or expired at that moment). Otherwise the credits sat in the
# expired lot between two writes, counted as available by whatever answered meanwhile; the
# check above sees that only until the next write, this one for good.
_EXPIRED_BY_A_LATER_WRITE = """
WITH expiries AS (
    SELECT user_id, transaction_id, xact_id, created_at, (metadata->>'lot_id')::bigint AS lot_id,
           row_number() OVER (PARTITION BY user_id, metadata->>'lot_id'
                              ORDER BY transaction_id) AS nth
    FROM credit_transactions
    WHERE type = 'expire' AND coalesce(metadata->>'reason', '') <> 'carry_over_cap'
)
SELECT e.user_id, e.transaction_id, e.lot_id FROM expiries e
WHERE e.nth > 1
  AND NOT EXISTS (
      SELECT 1 FROM credit_transactions g
      WHERE g.user_id = e.user_id AND g.xact_id = e.xact_id
        AND (g.type = 'reversal' OR (g.type = 'debit' AND g.hold_id IS NOT NULL)))
  AND NOT EXISTS (
      SELECT 1 FROM holds h
      JOIN hold_lots hl ON hl.user_id = h.user_id AND hl.hold_id = h.hold_id
      WHERE h.user_id = e.user_id AND hl.lot_id = e.lot_id
        AND h.status IN ('voided', 'expired') AND h.finalized_at = e.created_at)
ORDER BY e.user_id, e.transaction_id
LIMIT $1
"""


# The same for holds: a hold whose TTL had ended by the account's last write was released.
_HELD_PAST_EXPIRY = """
SELECT h.user_id, h.hold_id, h.expires_at, c.updated_at
FROM holds h JOIN credits c ON c.user_id = h.user_id
WHERE h.status = 'pending' AND h.expires_at <= c.updated_at
ORDER BY h.user_id, h.hold_id
LIMIT $1
"""

# Results of billing events are stored in the billing scope and name their account. The row
# right after the reply's own last row, if the same database transaction wrote it, can only be
# the next debit of the same batch: anything else means the reply stopped short of its request.
_REPLIES = """
WITH replies AS (
    SELECT CASE WHEN r.user_id = '~billing' THEN r.result->>'user_id' ELSE r.user_id END
               AS user_id,
           r.request_id, r.method, r.xact_id,
           (r.result->'balances'->>'balance_micros')::bigint AS balance,
           (r.result->'balances'->>'held_micros')::bigint AS held,
           (r.result->'balances'->>'available_micros')::bigint AS available,
           (r.result->'balances'->>'last_transaction_id')::bigint AS last_tx,
           (r.result->>'transaction_id')::bigint AS tx
    FROM idempotency_records r
    WHERE jsonb_typeof(r.result->'balances') = 'object'
), checked AS (
    SELECT p.*, h.balance_after_micros AS history_balance, h.transaction_id AS found_last,
           own.transaction_id AS found_own,
           next.transaction_id AS next_tx, next.type AS next_type,
           next.request_id AS next_request, next.xact_id = p.xact_id AS next_same_xact
    FROM replies p
    LEFT JOIN credit_transactions h ON h.user_id = p.user_id AND h.transaction_id = p.last_tx
    LEFT JOIN credit_transactions own ON own.user_id = p.user_id AND own.transaction_id = p.tx
    LEFT JOIN LATERAL (
        SELECT t.transaction_id, t.type, t.request_id, t.xact_id FROM credit_transactions t
        WHERE t.user_id = p.user_id AND t.transaction_id > coalesce(p.last_tx, 0)
        ORDER BY t.transaction_id LIMIT 1
    ) next ON true
)
SELECT * FROM checked
WHERE available <> balance - held
   OR coalesce(history_balance, 0) <> balance
   OR (last_tx IS NOT NULL AND found_last IS NULL)
   OR (tx IS NOT NULL AND (found_own IS NULL OR tx > coalesce(last_tx, 0)))
   OR (next_same_xact AND NOT (next_type = 'debit' AND next_request IS DISTINCT FROM request_id))
ORDER BY user_id, request_id
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
    for r in await conn.fetch(_EXPIRED_BY_A_LATER_WRITE, cap):
        found.append(
            (
                r["user_id"],
                f"transaction {r['transaction_id']} expired credits that had come back to lot "
                f"{r['lot_id']} after its expiry, in a later write than the give-back",
            )
        )
    for r in await conn.fetch(_HELD_PAST_EXPIRY, cap):
        found.append(
            (
                r["user_id"],
                f"hold {r['hold_id']} is still pending although it expired at "
                f"{r['expires_at'].isoformat()} and the account was written at "
                f"{r['updated_at'].isoformat()}",
            )
        )
    for r in await conn.fetch(_REPLIES, cap):
        found.append(
            (
                r["user_id"],
                f"{r['method']} {r['request_id']!r} replied balance={r['balance']} "
                f"held={r['held']} available={r['available']} as of transaction "
                f"{r['last_tx']} (its own {r['tx']}); the history says balance="
                f"{r['history_balance']} there, and its request went on to transaction "
                f"{r['next_tx'] if r['next_same_xact'] else 'none'} ({r['next_type']})",
            )
        )
    return found
