"""The carry-over cap after the fact: credits that come back to a carried subscription lot.

A renewal (or the rollover) caps the subscription credits carried past ended periods at one
allotment, counting what the lots have left, and records that cap on each period it settles
(``subscription_periods.carry_cap_micros``). Credits a pending hold reserved from a carried
lot are the hold's: a capture spends them, as it would have before the period ended. But what
comes back to a carried lot later (a void, an expired hold, the unspent part of a capture, a
reversal) is carried too, and counts against the recorded cap: what would take the carried
credits above it expires at once (``expire``, reason ``carry_over_cap``), soonest-expiring
lots first, as at the renewal. Otherwise a hold placed just before a downgrade renewal, then
voided, would carry the whole old allotment past the cap.
"""

from __future__ import annotations

import datetime as dt

from creditwallet.server.db import Connection
from creditwallet.server.ledger import lots
from creditwallet.server.ledger.types import Account

REASON = "carry_over_cap"

# The account's live lots of settled periods, with the cap their settlement recorded.
_CARRIED = """
SELECT l.lot_id, l.remaining_micros, p.carry_cap_micros FROM subscription_periods p
JOIN credit_lots l ON l.user_id = p.user_id AND l.lot_id = p.lot_id
WHERE p.user_id = $1 AND p.lot_id IS NOT NULL AND p.carry_cap_micros IS NOT NULL
  AND l.remaining_micros > 0 AND (l.expires_at IS NULL OR l.expires_at > $2)
ORDER BY l.expires_at ASC NULLS LAST, l.granted_at, l.lot_id
"""


async def enforce(conn: Connection, account: Account, now: dt.datetime) -> Account:
    """Expire what the carried lots hold above their recorded cap (after credits came back)."""
    carried = await conn.fetch(_CARRIED, account.user_id, now)
    if not carried:
        return account
    excess = sum(r["remaining_micros"] for r in carried) - max(
        r["carry_cap_micros"] for r in carried
    )
    for lot in carried:
        if excess <= 0:
            break
        take = min(excess, lot["remaining_micros"])
        account = await lots.expire_portion(
            conn, account, lot["lot_id"], "subscription", take, now, REASON
        )
        excess -= take
    return account
