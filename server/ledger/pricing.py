"""Agent prices: micros per unit, and the cost of a use (price x quantity, exact)."""

from __future__ import annotations

import datetime as dt

from creditwallet.core import limits
from creditwallet.server import errors
from creditwallet.server.db import Connection
from creditwallet.server.ledger.types import AgentPrice

_GET = "SELECT price_micros, active FROM agent_pricing WHERE agent_id = $1"

_SET = f"""
INSERT INTO agent_pricing (agent_id, price_micros, unit, active, updated_at)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (agent_id) DO UPDATE
SET price_micros = EXCLUDED.price_micros, unit = EXCLUDED.unit, active = EXCLUDED.active,
    updated_at = EXCLUDED.updated_at
RETURNING {AgentPrice.COLUMNS}
"""

_PAGE = f"""
SELECT {AgentPrice.COLUMNS} FROM agent_pricing
WHERE agent_id > $1 ORDER BY agent_id LIMIT $2
"""


async def cost(conn: Connection, agent_id: str, quantity: int) -> int:
    row = await conn.fetchrow(_GET, agent_id)
    if row is None:
        raise refusal("AGENT_NOT_FOUND", agent_id)
    if not row["active"]:
        raise refusal("AGENT_DISABLED", agent_id)
    return checked_cost(row["price_micros"], quantity)


def refusal(reason: str, agent_id: str) -> errors.LedgerError:
    """AGENT_NOT_FOUND or AGENT_DISABLED (debits decide them in the database: ledger/debit.py)."""
    if reason == "AGENT_NOT_FOUND":
        return errors.not_found("AGENT_NOT_FOUND", "no price for agent_id", agent_id=agent_id)
    return errors.precondition("AGENT_DISABLED", "agent is not active", agent_id=agent_id)


def checked_cost(price_micros: int, quantity: int) -> int:
    """price x quantity, refused when it overflows the per-request bound."""
    total = price_micros * quantity
    if total > limits.AMOUNT_MICROS_MAX:
        raise too_costly()
    return total


def too_costly() -> errors.LedgerError:
    return errors.invalid("quantity", "price x quantity exceeds the per-request maximum")


async def set_price(
    conn: Connection, agent_id: str, price_micros: int, unit: str, active: bool, now: dt.datetime
) -> AgentPrice:
    row = await conn.fetchrow(_SET, agent_id, price_micros, unit, active, now)
    assert row is not None
    return AgentPrice.from_row(row)


async def page(conn: Connection, after: str, page_size: int) -> list[AgentPrice]:
    return [AgentPrice.from_row(r) for r in await conn.fetch(_PAGE, after, page_size)]
