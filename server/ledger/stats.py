"""GetStats: the seed's two operator queries, as they are written in SPEC §4, unmodified.

They return credits (exact numeric); the RPC converts them to micros for the wire.
"""

from __future__ import annotations

from decimal import Decimal

import asyncpg
from creditwallet.server.db import Connection

SEED_TOTALS = """
SELECT COUNT(*) as total_users, SUM(balance) as total_credits, AVG(balance) as avg_balance
FROM credits;
"""

SEED_LAST_DAY = """
SELECT type, COUNT(*) as count, SUM(amount) as total_amount
FROM credit_transactions
WHERE created_at >= NOW() - INTERVAL '1 day'
GROUP BY type;
"""


async def stats(conn: Connection) -> tuple[asyncpg.Record, list[asyncpg.Record]]:
    totals = await conn.fetchrow(SEED_TOTALS)
    assert totals is not None
    return totals, list(await conn.fetch(SEED_LAST_DAY))


def to_micros(credits: Decimal | None) -> int:
    """Exact credits to micros, truncating toward zero (only AVG can carry more digits)."""
    if credits is None:
        return 0
    return int(credits * 1_000_000)
