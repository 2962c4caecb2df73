"""VerifyLedger for restricted credits and overdrafts: invariants 11 and 12.

Invariant 11 (applicability): no lot paid for what it does not apply to. A lot restricted to
some agents (``agent_ids``) was consumed only by debits for one of them, and reserves only
for pending holds of one of them; a debit or hold for no agent used unrestricted lots only.

Invariant 12 (debt): every micro of debt is an overdraft within a limit the account really had,
or what a refund left unpaid. Per account: the unpaid overdrafts are at most the debt, and the
rest of the debt is at most what the account's clawbacks could not take from their lots. Per
overdraft: it belongs to a debit of the account and is at most that debit, the debt it left
was within the limit it was taken under, and that limit is one the account had been set to by
then (``overdraft_limit_changes``).

Invariant 2 counts an overdraft's unpaid part with the debit's consumptions (``verify.py``).
"""

from __future__ import annotations

from creditwallet.server.db import Connection

APPLICABILITY = 11
DEBT = 12

_NOT_APPLICABLE = """
SELECT c.user_id, 'transaction ' || c.transaction_id || ' for agent '
       || coalesce(t.agent_id, '(none)') || ' consumed lot ' || c.lot_id
       || ' restricted to ' || array_to_string(l.agent_ids, ',') AS detail
FROM lot_consumptions c
JOIN credit_transactions t ON t.user_id = c.user_id AND t.transaction_id = c.transaction_id
JOIN credit_lots l ON l.user_id = c.user_id AND l.lot_id = c.lot_id
WHERE cardinality(l.agent_ids) > 0 AND NOT coalesce(t.agent_id = ANY(l.agent_ids), false)
UNION ALL
SELECT hl.user_id, 'pending hold ' || hl.hold_id || ' for agent '
       || coalesce(h.agent_id, '(none)') || ' reserves lot ' || hl.lot_id
       || ' restricted to ' || array_to_string(l.agent_ids, ',')
FROM hold_lots hl
JOIN holds h ON h.user_id = hl.user_id AND h.hold_id = hl.hold_id
JOIN credit_lots l ON l.user_id = hl.user_id AND l.lot_id = hl.lot_id
WHERE h.status = 'pending' AND cardinality(l.agent_ids) > 0
  AND NOT coalesce(h.agent_id = ANY(l.agent_ids), false)
LIMIT $1
"""

_DEBT_ORIGIN = """
WITH od AS (
    SELECT user_id, sum(amount_micros - paid_micros - reversed_micros)::bigint AS unpaid
    FROM debit_overdrafts GROUP BY user_id
), refunds AS (
    SELECT user_id,
           sum(-amount_micros - coalesce((metadata->>'from_lot_micros')::bigint, 0))::bigint
               AS unpaid_max
    FROM credit_transactions WHERE type = 'clawback' GROUP BY user_id
)
SELECT c.user_id, 'debt ' || c.debt_micros || ': unpaid overdrafts '
       || coalesce(od.unpaid, 0) || ', refunds could leave at most '
       || coalesce(refunds.unpaid_max, 0) AS detail
FROM credits c LEFT JOIN od USING (user_id) LEFT JOIN refunds USING (user_id)
WHERE coalesce(od.unpaid, 0) > c.debt_micros
   OR c.debt_micros - coalesce(od.unpaid, 0) > coalesce(refunds.unpaid_max, 0)
LIMIT $1
"""

_OVERDRAFTS = """
SELECT o.user_id, 'overdraft of transaction ' || o.transaction_id || ' (' || o.amount_micros
       || ' micros, debt after ' || o.debt_after_micros || ', limit ' || o.limit_micros
       || ') ' || CASE
           WHEN t.transaction_id IS NULL OR t.type <> 'debit' THEN 'belongs to no debit'
           WHEN o.amount_micros > -t.amount_micros THEN 'exceeds its debit'
           WHEN o.debt_after_micros > o.limit_micros THEN 'left debt beyond its limit'
           ELSE 'used a limit the account was never set to by then' END AS detail
FROM debit_overdrafts o
LEFT JOIN credit_transactions t ON t.user_id = o.user_id AND t.transaction_id = o.transaction_id
WHERE t.transaction_id IS NULL OR t.type <> 'debit'
   OR o.amount_micros > -t.amount_micros
   OR o.debt_after_micros > o.limit_micros
   OR NOT EXISTS (
       SELECT 1 FROM overdraft_limit_changes x
       WHERE x.user_id = o.user_id AND x.limit_micros = o.limit_micros
         AND x.changed_at <= t.created_at)
LIMIT $1
"""


async def violations(conn: Connection, cap: int) -> list[tuple[int, str, str]]:
    found: list[tuple[int, str, str]] = []
    for r in await conn.fetch(_NOT_APPLICABLE, cap):
        found.append((APPLICABILITY, r["user_id"], r["detail"]))
    for query in (_DEBT_ORIGIN, _OVERDRAFTS):
        for r in await conn.fetch(query, cap):
            found.append((DEBT, r["user_id"], r["detail"]))
    return found
