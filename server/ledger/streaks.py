"""Smart Streaks: per-day activity and milestone rewards (SPEC §9).

``record_debit`` runs inside every successful debit's transaction. It counts the day's
activity; the streak bookkeeping and rewards are added by the streaks issue.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from server.db import Connection
from server.ledger.types import Account

_ACTIVITY = """
INSERT INTO user_activity (user_id, day, debit_count) VALUES ($1, $2, 1)
ON CONFLICT (user_id, day) DO UPDATE SET debit_count = user_activity.debit_count + 1
RETURNING (xmax = 0) AS first_today
"""


@dataclasses.dataclass(frozen=True)
class Reward:
    milestone_days: int
    amount_micros: int
    transaction_id: int
    account: Account


async def record_debit(conn: Connection, account: Account, now: dt.datetime) -> Reward | None:
    """Count a successful debit for the UTC day of ``now``; return a milestone reward if reached."""
    await conn.fetchval(_ACTIVITY, account.user_id, now.date())
    return None
