"""Referral codes and rewards (SPEC §10).

``on_first_payment`` is called by the billing path, inside its transaction, whenever a paid
purchase or subscription period is recorded for a user; it grants the referrer's reward on
the referee's first payment. The rest of the referral feature lives here too.
"""

from __future__ import annotations

import datetime as dt

from server.db import Connection


async def on_first_payment(conn: Connection, user_id: str, now: dt.datetime) -> None:
    """Reward the user's referrer, once, when the user's first payment is recorded."""
    return None
