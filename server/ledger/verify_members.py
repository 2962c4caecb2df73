"""VerifyLedger, invariant 9: no member of a team wallet ever spent past its cap.

Why from the history and not from the counters: ``member_spend`` is what the cap check reads,
so a bug in the counters would pass a check of the counters against themselves. This check
rebuilds each member's spend from the history (debits and captures on their spend day, a
capture on its hold's day, a reversal on its debit's day) and the cap in force at each debit
from ``member_changes`` (the append-only record of SetMember, each change placed after the
account's newest history row when it was made). Then:

- every debit (not a capture) that names a member names one that was set and active then,
  and the member's running spend of that debit's period, that debit included, is within the
  cap then in force. A capture is bounded by its hold, which was checked when it was placed
  (the history does not record the holds pending at each moment, so this check is the
  necessary condition: spend, without the holds, within the cap);
- the counters equal the history: per member and day, spent = debits - their reversals, and
  held = the member's pending holds placed that day.
"""

from __future__ import annotations

from typing import Final

from creditwallet.server.db import Connection

INVARIANT: Final = 9

# Every change to a member's spend, on its spend day, in commit order (transaction_id).
_SPEND = """
SELECT t.user_id, t.member_id, t.transaction_id, t.hold_id IS NULL AS checked,
       -t.amount_micros AS delta, cw_utc_day(coalesce(h.created_at, t.created_at)) AS day
FROM credit_transactions t
LEFT JOIN holds h ON h.user_id = t.user_id AND h.hold_id = t.hold_id
WHERE t.type = 'debit' AND t.member_id IS NOT NULL
UNION ALL
SELECT r.user_id, d.member_id, r.transaction_id, false, -r.amount_micros,
       cw_utc_day(coalesce(h.created_at, d.created_at))
FROM credit_transactions r
JOIN credit_transactions d ON d.user_id = r.user_id AND d.transaction_id = r.related_transaction_id
LEFT JOIN holds h ON h.user_id = d.user_id AND h.hold_id = d.hold_id
WHERE r.type = 'reversal' AND d.member_id IS NOT NULL
"""

_OVER_CAP = f"""
WITH spend AS ({_SPEND}), running AS (
    SELECT s.*,
           sum(delta) OVER (PARTITION BY user_id, member_id, day
                            ORDER BY transaction_id) AS day_spent,
           sum(delta) OVER (PARTITION BY user_id, member_id, date_trunc('month', day)
                            ORDER BY transaction_id) AS month_spent
    FROM spend s
)
SELECT r.user_id, r.member_id, r.transaction_id, r.day, r.day_spent, r.month_spent,
       c.cap_micros, c.cap_period, c.active
FROM running r
LEFT JOIN LATERAL (
    SELECT cap_micros, cap_period, active FROM member_changes c
    WHERE c.user_id = r.user_id AND c.member_id = r.member_id
      AND c.after_transaction_id < r.transaction_id
    ORDER BY c.after_transaction_id DESC, c.change_id DESC LIMIT 1
) c ON true
WHERE r.checked AND (
    c.cap_micros IS NULL OR NOT c.active
    OR CASE c.cap_period WHEN 'day' THEN r.day_spent ELSE r.month_spent END > c.cap_micros)
LIMIT $1
"""

_COUNTERS = f"""
WITH spend AS ({_SPEND}), expected AS (
    SELECT user_id, member_id, day, sum(spent)::bigint AS spent, sum(held)::bigint AS held
    FROM (
        SELECT user_id, member_id, day, delta AS spent, 0 AS held FROM spend
        UNION ALL
        SELECT user_id, member_id, cw_utc_day(created_at), 0, amount_micros FROM holds
        WHERE status = 'pending' AND member_id IS NOT NULL
    ) x
    GROUP BY 1, 2, 3
)
SELECT user_id, member_id, day, coalesce(e.spent, 0) AS spent, coalesce(e.held, 0) AS held,
       coalesce(s.spent_micros, 0) AS counted_spent, coalesce(s.held_micros, 0) AS counted_held
FROM expected e FULL JOIN member_spend s USING (user_id, member_id, day)
WHERE coalesce(e.spent, 0) <> coalesce(s.spent_micros, 0)
   OR coalesce(e.held, 0) <> coalesce(s.held_micros, 0)
LIMIT $1
"""


async def violations(conn: Connection, cap: int) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for r in await conn.fetch(_OVER_CAP, cap):
        if r["cap_micros"] is None:
            why = "names a member that was never set"
        elif not r["active"]:
            why = "names a member that was inactive"
        else:
            spent = r["day_spent"] if r["cap_period"] == "day" else r["month_spent"]
            why = f"brought its {r['cap_period']} spend to {spent}, over the cap {r['cap_micros']}"
        found.append(
            (
                r["user_id"],
                f"debit {r['transaction_id']} of member {r['member_id']!r} on {r['day']} {why}",
            )
        )
    for r in await conn.fetch(_COUNTERS, cap):
        found.append(
            (
                r["user_id"],
                f"member {r['member_id']!r} on {r['day']}: the history says spent={r['spent']} "
                f"held={r['held']}, the counters say spent={r['counted_spent']} "
                f"held={r['counted_held']}",
            )
        )
    return found
