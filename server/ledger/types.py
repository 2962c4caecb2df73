"""Names shared by the ledger modules: lot sources, transaction types and the account row."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Final

import asyncpg

LOT_SOURCES: Final = (
    "trial",
    "subscription",
    "top_up",
    "referral",
    "streak",
    "promo",
    "adjustment",
)
TRANSACTION_TYPES: Final = ("grant", "debit", "expire", "reversal", "clawback", "expiry_change")

# Default lifetimes (SPEC §5); None means the lot never expires. Subscription lots get
# their expiry from the billing period, not from here.
DEFAULT_LOT_LIFETIME: Final[dict[str, dt.timedelta | None]] = {
    "trial": dt.timedelta(days=30),
    "streak": dt.timedelta(days=90),
    "referral": dt.timedelta(days=90),
    "top_up": None,
    "promo": None,
    "adjustment": None,
    "subscription": None,
}


def default_expiry(source: str, now: dt.datetime) -> dt.datetime | None:
    lifetime = DEFAULT_LOT_LIFETIME[source]
    return now + lifetime if lifetime is not None else None


@dataclasses.dataclass(frozen=True)
class Account:
    """The locked ``credits`` row of one user."""

    user_id: str
    balance_micros: int
    held_micros: int
    debt_micros: int
    next_expiry_at: dt.datetime | None
    created_at: dt.datetime

    @property
    def available_micros(self) -> int:
        return self.balance_micros - self.held_micros

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Account:
        return cls(
            user_id=row["user_id"],
            balance_micros=row["balance_micros"],
            held_micros=row["held_micros"],
            debt_micros=row["debt_micros"],
            next_expiry_at=row["next_expiry_at"],
            created_at=row["created_at"],
        )

    def sweep_due(self, now: dt.datetime) -> bool:
        return self.next_expiry_at is not None and self.next_expiry_at <= now
