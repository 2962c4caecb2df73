"""Provider customers: which user owns a customer id, learnt once and kept.

A checkout names both the user (client_reference_id) and the customer; later subscription
and invoice events name only the customer, so this mapping is how they find their user.
The first link wins: a later event naming another user for the same customer is logged and
ignored, because re-pointing a customer would move paid periods between accounts.
"""

from __future__ import annotations

import datetime as dt
import logging

from creditwallet.server.db import Connection

log = logging.getLogger(__name__)

_LINK = """
INSERT INTO billing_customers (customer_id, user_id, created_at) VALUES ($1, $2, $3)
ON CONFLICT (customer_id) DO NOTHING
"""

_OWNER = "SELECT user_id FROM billing_customers WHERE customer_id = $1"

_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('customer:' || $1, 0))"


async def lock(conn: Connection, customer_id: str) -> None:
    """Serialize the writers that link a customer and those that look its owner up.

    A checkout that links customer -> user and a subscription event for the same new
    customer may run at the same moment, each unable to see the other's uncommitted rows;
    without this lock the subscription's paid period would wait for its next event to find
    its user. Taken first, before any subscription row or account lock.
    """
    if customer_id:
        await conn.execute(_LOCK, customer_id)


async def link(conn: Connection, customer_id: str, user_id: str, now: dt.datetime) -> str:
    """Record customer -> user once; return the owner as recorded (the first link)."""
    if not customer_id:
        return user_id
    await conn.execute(_LINK, customer_id, user_id, now)
    owner = await owner_of(conn, customer_id)
    if owner is not None and owner != user_id:
        log.warning("customer already linked to another user", extra={"customer": customer_id})
    return owner or user_id


async def owner_of(conn: Connection, customer_id: str) -> str | None:
    if not customer_id:
        return None
    owner = await conn.fetchval(_OWNER, customer_id)
    return str(owner) if owner is not None else None
