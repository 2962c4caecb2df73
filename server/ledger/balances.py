"""GetBalance: available, held, debt and the live lots, exact at read time.

A read never waits for a sweeper: if the account has an expiry due (its next_expiry_at has
passed), the caller first runs the sweep in a write transaction, so the expiry is recorded
and the figures returned are exact.
"""

from __future__ import annotations

import datetime as dt

import asyncpg
from creditwallet.server.db import Connection

_LIVE_LOTS = """
SELECT lot_id, source, amount_micros, remaining_micros, granted_at, expires_at
FROM credit_lots
WHERE user_id = $1 AND remaining_micros > 0 AND (expires_at IS NULL OR expires_at > $2)
ORDER BY expires_at ASC NULLS LAST, granted_at, lot_id
"""


async def live_lots(conn: Connection, user_id: str, now: dt.datetime) -> list[asyncpg.Record]:
    return list(await conn.fetch(_LIVE_LOTS, user_id, now))
