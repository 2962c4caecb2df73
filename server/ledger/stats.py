"""GetStats: the two operator queries of the original design, run unmodified; and
GetDailyTotals, the overview's figures per UTC day and its ranking of agents by spend.

The seed queries return credits (exact numeric); they are converted to micros here, exactly.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
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


# The overview's per-day figures. Both read the window's rows through the BRIN index on
# created_at (an append-only table written in time order keeps it tight), so a 30-day window
# costs the pages of 30 days, not of the whole history.
DAILY_BY_TYPE = """
SELECT (created_at AT TIME ZONE 'UTC')::date AS day, type, COUNT(*) AS count,
       SUM(amount_micros) AS amount_micros
FROM credit_transactions
WHERE created_at >= $1
GROUP BY 1, 2
ORDER BY 1, 2
"""

TOP_AGENTS = """
SELECT agent_id, COUNT(*) AS debits, -SUM(amount_micros) AS spent_micros
FROM credit_transactions
WHERE created_at >= $1 AND type = 'debit' AND agent_id IS NOT NULL
GROUP BY agent_id
ORDER BY spent_micros DESC, agent_id
LIMIT $2
"""


@dataclasses.dataclass(frozen=True)
class DayTotal:
    day: dt.date
    type: str
    count: int
    amount_micros: int


@dataclasses.dataclass(frozen=True)
class AgentSpend:
    agent_id: str
    debits: int
    spent_micros: int


@dataclasses.dataclass(frozen=True)
class DailyTotals:
    start: dt.date
    end: dt.date
    totals: list[DayTotal]
    top_agents: list[AgentSpend]


def window_start(now: dt.datetime, days: int) -> dt.date:
    """The first UTC day of a window of ``days`` days that ends today."""
    return now.astimezone(dt.UTC).date() - dt.timedelta(days=days - 1)


async def daily_totals(
    conn: Connection, now: dt.datetime, days: int, top_agents: int
) -> DailyTotals:
    start = window_start(now, days)
    since = dt.datetime.combine(start, dt.time(), tzinfo=dt.UTC)
    return DailyTotals(
        start=start,
        end=now.astimezone(dt.UTC).date(),
        totals=[
            DayTotal(r["day"], r["type"], r["count"], int(r["amount_micros"]))
            for r in await conn.fetch(DAILY_BY_TYPE, since)
        ],
        top_agents=[
            AgentSpend(r["agent_id"], r["debits"], int(r["spent_micros"]))
            for r in await conn.fetch(TOP_AGENTS, since, top_agents)
        ],
    )
