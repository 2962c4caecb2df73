"""VerifyLedger: the invariants of docs/design.md, checked over the whole database.

The database already refuses much of what is checked here (CHECK, UNIQUE, primary keys);
this is the second check, after the fact, of what constraints cannot express: that the
balance, the history, the lots and the holds of every account agree to the micro.
"""

from __future__ import annotations

import dataclasses

from creditwallet.core import limits
from creditwallet.server.db import Connection
from creditwallet.server.ledger import (
    verify_carry,
    verify_lots,
    verify_members,
    verify_refunds,
    verify_rewards,
    verify_subscriptions,
    verify_time,
    verify_usage,
)

# 1. balance = sum(history) = sum(lots.remaining) + held - debt; held = pending holds; the
# account names its newest history row.
_PER_ACCOUNT = """
WITH tx AS (
    SELECT user_id, sum(amount_micros)::bigint AS total, max(transaction_id) AS last
    FROM credit_transactions GROUP BY user_id
), lot AS (
    SELECT user_id, sum(remaining_micros)::bigint AS remaining FROM credit_lots GROUP BY user_id
), hold AS (
    SELECT user_id, sum(amount_micros)::bigint AS held FROM holds
    WHERE status = 'pending' GROUP BY user_id
), reserved AS (
    SELECT h.user_id, sum(hl.amount_micros)::bigint AS reserved
    FROM holds h JOIN hold_lots hl ON hl.user_id = h.user_id AND hl.hold_id = h.hold_id
    WHERE h.status = 'pending' GROUP BY h.user_id
)
SELECT c.user_id, c.balance_micros, c.held_micros, c.debt_micros,
       c.last_transaction_id, tx.last AS history_last,
       coalesce(tx.total, 0) AS history, coalesce(lot.remaining, 0) AS lots,
       coalesce(hold.held, 0) AS pending, coalesce(reserved.reserved, 0) AS reserved
FROM credits c
LEFT JOIN tx USING (user_id) LEFT JOIN lot USING (user_id)
LEFT JOIN hold USING (user_id) LEFT JOIN reserved USING (user_id)
WHERE c.balance_micros <> coalesce(tx.total, 0)
   OR c.balance_micros <> coalesce(lot.remaining, 0) + c.held_micros - c.debt_micros
   OR c.held_micros <> coalesce(hold.held, 0)
   OR c.held_micros <> coalesce(reserved.reserved, 0)
   OR (c.balance_micros < 0 AND c.debt_micros = 0)
   OR c.balance_micros - c.held_micros + c.debt_micros < 0
   OR c.last_transaction_id IS DISTINCT FROM tx.last
LIMIT $1
"""

# 2. lots within bounds; consumptions (with the unpaid overdraft) add up to their debit.
_LOTS = """
SELECT user_id, lot_id, amount_micros, remaining_micros FROM credit_lots
WHERE remaining_micros < 0 OR remaining_micros > amount_micros LIMIT $1
"""

# What a debit consumed from its lots, plus the part taken on overdraft not paid yet (each
# payment of it is a consumption of the debit), is the debit.
_CONSUMPTIONS = """
WITH consumed AS (
    SELECT user_id, transaction_id, sum(amount_micros)::bigint AS consumed
    FROM lot_consumptions GROUP BY user_id, transaction_id
), unpaid AS (
    SELECT user_id, transaction_id, amount_micros - paid_micros AS unpaid FROM debit_overdrafts
), spent AS (
    SELECT user_id, transaction_id FROM consumed
    UNION SELECT user_id, transaction_id FROM unpaid
)
SELECT s.user_id, s.transaction_id,
       coalesce(c.consumed, 0) + coalesce(u.unpaid, 0) AS consumed, -t.amount_micros AS debited
FROM spent s
JOIN credit_transactions t ON t.user_id = s.user_id AND t.transaction_id = s.transaction_id
LEFT JOIN consumed c ON c.user_id = s.user_id AND c.transaction_id = s.transaction_id
LEFT JOIN unpaid u ON u.user_id = s.user_id AND u.transaction_id = s.transaction_id
WHERE coalesce(c.consumed, 0) + coalesce(u.unpaid, 0) <> -t.amount_micros
LIMIT $1
"""

# 3. each request applied at most once.
_DUPLICATES = """
SELECT user_id, request_id, type, count(*) AS n FROM credit_transactions
WHERE request_id IS NOT NULL AND type IN ('debit', 'reversal')
GROUP BY user_id, request_id, type HAVING count(*) > 1 LIMIT $1
"""

# 4. granted + reversed - debited - expired - clawed back = total balance.
_TOTALS = """
SELECT (SELECT coalesce(sum(amount_micros), 0) FROM credit_transactions)::numeric AS history,
       (SELECT coalesce(sum(balance_micros), 0) FROM credits)::numeric AS balances,
       (SELECT count(*) FROM credits) AS accounts
"""


@dataclasses.dataclass(frozen=True)
class Violation:
    invariant: int
    user_id: str
    detail: str


async def verify(conn: Connection) -> tuple[int, list[Violation]]:
    cap = limits.VERIFY_VIOLATIONS_MAX
    found: list[Violation] = []
    for r in await conn.fetch(_PER_ACCOUNT, cap):
        found.append(
            Violation(
                1,
                r["user_id"],
                f"balance={r['balance_micros']} history={r['history']} lots={r['lots']} "
                f"held={r['held_micros']} pending_holds={r['pending']} "
                f"reserved={r['reserved']} debt={r['debt_micros']} "
                f"last_transaction={r['last_transaction_id']} history_last={r['history_last']}",
            )
        )
    for r in await conn.fetch(_LOTS, cap):
        found.append(
            Violation(
                2,
                r["user_id"],
                f"lot {r['lot_id']} remaining={r['remaining_micros']} amount={r['amount_micros']}",
            )
        )
    for r in await conn.fetch(_CONSUMPTIONS, cap):
        found.append(
            Violation(
                2,
                r["user_id"],
                f"transaction {r['transaction_id']} consumed "
                f"{r['consumed']} from lots but debited {r['debited']}",
            )
        )
    for r in await conn.fetch(_DUPLICATES, cap):
        found.append(
            Violation(
                3, r["user_id"], f"request_id {r['request_id']!r} wrote {r['n']} {r['type']} rows"
            )
        )
    for user_id, detail in await verify_rewards.violations(conn, cap):
        found.append(Violation(3, user_id, detail))
    for user_id, detail in await verify_time.violations(conn, cap):
        found.append(Violation(verify_time.INVARIANT, user_id, detail))
    for invariant, user_id, detail in await verify_subscriptions.violations(conn, cap):
        found.append(Violation(invariant, user_id, detail))
    for invariant, user_id, detail in await verify_lots.violations(conn, cap):
        found.append(Violation(invariant, user_id, detail))
    for user_id, detail in await verify_carry.violations(conn, cap):
        found.append(Violation(verify_carry.INVARIANT, user_id, detail))
    for user_id, detail in await verify_refunds.violations(conn, cap):
        found.append(Violation(verify_refunds.INVARIANT, user_id, detail))
    for user_id, detail in await verify_members.violations(conn, cap):
        found.append(Violation(verify_members.INVARIANT, user_id, detail))
    for user_id, detail in await verify_usage.violations(conn, cap):
        found.append(Violation(verify_usage.INVARIANT, user_id, detail))
    totals = await conn.fetchrow(_TOTALS)
    assert totals is not None
    if totals["history"] != totals["balances"]:
        found.append(
            Violation(
                4, "", f"history totals {totals['history']} but balances total {totals['balances']}"
            )
        )
    return totals["accounts"], found[:cap]
