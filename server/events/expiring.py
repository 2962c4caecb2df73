"""credits.expiring: once per lot, when its expiry is within the configured lead time.

A periodic scan finds live lots whose ``expires_at`` falls within (now, now + lead] and that
have no notice yet, locks their accounts (in user_id order, as every writer does), and
inserts one ``lot_expiry_notices`` row per lot; the row's trigger writes the event, with
the lot's own ``expires_at``, the exact moment the ledger stops counting those credits.
The notice's primary key makes it once per lot, whichever replica's scan gets there first.
"""

from __future__ import annotations

import datetime as dt

from creditwallet.core import limits
from creditwallet.server.db import Connection

_DUE = """
SELECT l.user_id, l.lot_id FROM credit_lots l
WHERE l.remaining_micros > 0 AND l.expires_at IS NOT NULL
  AND l.expires_at > $1 AND l.expires_at <= $2
  AND NOT EXISTS (SELECT 1 FROM lot_expiry_notices n
                  WHERE n.user_id = l.user_id AND n.lot_id = l.lot_id)
ORDER BY l.expires_at, l.user_id, l.lot_id LIMIT $3
"""

_LOCK = "SELECT 1 FROM credits WHERE user_id = ANY ($1::text[]) ORDER BY user_id FOR UPDATE"

# Re-read under the account locks: a lot spent or expired meanwhile gets no notice.
_NOTICE = """
INSERT INTO lot_expiry_notices (user_id, lot_id, source, remaining_micros, expires_at,
                                notified_at)
SELECT l.user_id, l.lot_id, l.source, l.remaining_micros, l.expires_at, $3
FROM credit_lots l JOIN unnest($1::text[], $2::bigint[]) AS due (user_id, lot_id)
  ON l.user_id = due.user_id AND l.lot_id = due.lot_id
WHERE l.remaining_micros > 0 AND l.expires_at > $3 AND l.expires_at <= $4
ORDER BY l.user_id, l.expires_at, l.lot_id
ON CONFLICT (user_id, lot_id) DO NOTHING
"""


async def notice_due(conn: Connection, now: dt.datetime, lead_days: int) -> int:
    """One batch in the caller's transaction; returns the lots noticed."""
    horizon = now + dt.timedelta(days=lead_days)
    due = await conn.fetch(_DUE, now, horizon, limits.CREDITS_EXPIRING_SCAN_BATCH_MAX)
    if not due:
        return 0
    users = [r["user_id"] for r in due]
    await conn.execute(_LOCK, sorted(set(users)))
    status = await conn.execute(_NOTICE, users, [r["lot_id"] for r in due], now, horizon)
    return int(status.rsplit(" ", 1)[-1])
