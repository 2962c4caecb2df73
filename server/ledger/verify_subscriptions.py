"""VerifyLedger for subscription lots: one lot per paid period, expiring where it must.

Invariant 3 (once): each subscription lot granted for a period (grant_key
``subscription:<id>:<start>``) is the lot its ``subscription_periods`` row names, one to one.

Invariant 6 (expiry): each granted period's lot expires at the end of the period after its
own, as recorded from the provider: the end (or the cut) of the recorded paid period that
starts where this one ends, else the next boundary of the period's recorded schedule. The
only exception is a lot whose expiry had come when a different end became known: it is
never revived, nor moved into the past; it ends by the moment its period says that was
decided (``expiry_frozen_at``). The
account's history must also tell the lot's current expiry: the grant's ``expires_at``, or the
latest ``expiry_change`` row of the lot.

The schedule arithmetic here is PostgreSQL's (``billing_period_following``, migration 0005),
independent of the server's Python: ``timestamp + n months`` clamps to the month's length,
and each boundary is computed from the anchor.
"""

from __future__ import annotations

from creditwallet.server.db import Connection

_PAIRING = """
SELECT coalesce(l.user_id, p.user_id) AS user_id,
       'subscription lot ' || coalesce(l.lot_id::text, '-') || ' / period '
           || coalesce(p.subscription_id || ' ' || p.period_start::text, '-')
           || ' have no counterpart' AS detail
FROM (SELECT user_id, lot_id FROM credit_lots WHERE grant_key LIKE 'subscription:%') l
FULL JOIN (SELECT * FROM subscription_periods WHERE lot_id IS NOT NULL) p
    ON p.user_id = l.user_id AND p.lot_id = l.lot_id
WHERE l.user_id IS NULL OR p.user_id IS NULL
LIMIT $1
"""

_EXPIRY = """
WITH scheduled AS (
    SELECT sp.subscription_id, sp.period_start, sp.user_id, sp.lot_id, sp.expires_at,
           sp.expiry_frozen_at, sp.billing_interval AS iv,
           coalesce(sp.ended_at, sp.period_end) AS effective_end,
           billing_period_following(sp.billing_cycle_anchor, sp.billing_interval,
                                    sp.billing_interval_count, sp.period_end) AS following
    FROM subscription_periods sp WHERE sp.lot_id IS NOT NULL
), expected AS (
    SELECT sc.*, l.expires_at AS lot_expires_at, succ.successor_end,
           coalesce(succ.successor_end, sc.following) AS want
    FROM scheduled sc
    JOIN credit_lots l ON l.user_id = sc.user_id AND l.lot_id = sc.lot_id
    LEFT JOIN LATERAL (
        SELECT coalesce(q.ended_at, q.period_end) AS successor_end FROM subscription_periods q
        WHERE q.subscription_id = sc.subscription_id AND q.period_start = sc.effective_end
    ) succ ON true
)
SELECT user_id,
       'subscription ' || subscription_id || ' period ' || period_start::text || ': lot '
           || lot_id::text || ' expires ' || coalesce(lot_expires_at::text, 'never')
           || CASE
                WHEN lot_expires_at IS DISTINCT FROM expires_at
                    THEN ' but its period recorded ' || coalesce(expires_at::text, 'none')
                WHEN want IS NULL
                    THEN ' but the period does not end on its recorded schedule'
                ELSE ' but the period after its own ends ' || want::text
              END AS detail
FROM expected
WHERE lot_expires_at IS DISTINCT FROM expires_at
   OR (iv IS NOT NULL AND want IS NULL)
   OR (want IS NOT NULL AND lot_expires_at IS DISTINCT FROM want
       AND NOT (expiry_frozen_at IS NOT NULL AND lot_expires_at <= expiry_frozen_at))
LIMIT $1
"""

_HISTORY = """
SELECT l.user_id,
       'subscription lot ' || l.lot_id::text || ' expires '
           || coalesce(l.expires_at::text, 'never') || ' but its history says '
           || coalesce(coalesce(moved.expires_at, (g.metadata->>'expires_at')::timestamptz)::text,
                       'nothing') AS detail
FROM subscription_periods p
JOIN credit_lots l ON l.user_id = p.user_id AND l.lot_id = p.lot_id
JOIN credit_transactions g ON g.user_id = l.user_id AND g.transaction_id = l.transaction_id
LEFT JOIN LATERAL (
    SELECT (t.metadata->>'expires_at')::timestamptz AS expires_at FROM credit_transactions t
    WHERE t.user_id = l.user_id AND t.type = 'expiry_change'
      AND t.metadata->>'lot_id' = l.lot_id::text
    ORDER BY t.transaction_id DESC LIMIT 1
) moved ON true
WHERE p.lot_id IS NOT NULL
  AND (moved.expires_at IS NOT NULL OR g.metadata ? 'expires_at')
  AND coalesce(moved.expires_at, (g.metadata->>'expires_at')::timestamptz)
      IS DISTINCT FROM l.expires_at
LIMIT $1
"""


async def violations(conn: Connection, cap: int) -> list[tuple[int, str, str]]:
    """(invariant, user_id, detail) of every subscription lot that breaks a rule above."""
    found: list[tuple[int, str, str]] = []
    for invariant, query in ((3, _PAIRING), (6, _EXPIRY), (6, _HISTORY)):
        found += [(invariant, r["user_id"], r["detail"]) for r in await conn.fetch(query, cap)]
    return found[:cap]
