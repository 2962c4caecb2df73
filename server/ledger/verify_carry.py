"""VerifyLedger, invariant 7: the carry-over cap holds after the fact.

Each settled subscription period records the cap its carry-over was settled at. The credits
left in the lots of settled periods (the carried lots) never exceed it: spending only lowers
them, and whatever comes back to them later (a void, an expired hold, the unspent part of a
capture, a reversal) is capped again at once. The lots counted are those live at the
account's last write or settlement: a lot that expired since still holds its credits until
the next write records the expiry, but was carried (and capped) when last looked at.
"""

from __future__ import annotations

from creditwallet.server.db import Connection

INVARIANT = 7

# The account's time is its last write or its last settlement, whichever is later (the
# rollover settles a period without writing the account when nothing is over the cap).
_OVER_CAP = """
WITH at AS (
    SELECT p.user_id, greatest(c.updated_at, max(p.carry_settled_at)) AS t
    FROM subscription_periods p JOIN credits c ON c.user_id = p.user_id
    WHERE p.carry_cap_micros IS NOT NULL GROUP BY p.user_id, c.updated_at
)
SELECT p.user_id, sum(l.remaining_micros)::bigint AS carried,
       max(p.carry_cap_micros)::bigint AS cap, count(*) AS lots
FROM subscription_periods p
JOIN at ON at.user_id = p.user_id
JOIN credit_lots l ON l.user_id = p.user_id AND l.lot_id = p.lot_id
WHERE p.lot_id IS NOT NULL AND p.carry_cap_micros IS NOT NULL AND l.remaining_micros > 0
  AND (l.expires_at IS NULL OR l.expires_at > at.t)
GROUP BY p.user_id
HAVING sum(l.remaining_micros) > max(p.carry_cap_micros)
LIMIT $1
"""


async def violations(conn: Connection, cap: int) -> list[tuple[str, str]]:
    """(user_id, detail) of every account carrying more than its carry-over cap."""
    return [
        (
            r["user_id"],
            f"{r['lots']} carried subscription lot(s) hold {r['carried']} micros "
            f"above the carry-over cap {r['cap']}",
        )
        for r in await conn.fetch(_OVER_CAP, cap)
    ]
