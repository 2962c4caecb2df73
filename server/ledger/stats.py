"""GetStats: the two operator queries of the original design, run unmodified.

They return credits (exact numeric); they are converted to micros here, exactly.
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal

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


@dataclasses.dataclass(frozen=True)
class TypeTotal:
    type: str
    count: int
    total_micros: int


@dataclasses.dataclass(frozen=True)
class Stats:
    total_users: int
    total_credits_micros: int
    avg_balance_micros: int
    last_day: list[TypeTotal]


async def stats(conn: Connection) -> Stats:
    totals = await conn.fetchrow(SEED_TOTALS)
    assert totals is not None
    return Stats(
        total_users=totals["total_users"],
        total_credits_micros=to_micros(totals["total_credits"]),
        avg_balance_micros=to_micros(totals["avg_balance"]),
        last_day=[
            TypeTotal(r["type"], r["count"], to_micros(r["total_amount"]))
            for r in await conn.fetch(SEED_LAST_DAY)
        ],
    )


def to_micros(credits: Decimal | None) -> int:
    """Exact credits to micros, truncating toward zero (only AVG can carry more digits)."""
    if credits is None:
        return 0
    return int(credits * 1_000_000)
