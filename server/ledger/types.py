"""What the ledger's modules share: the names of sources and types, and the read models.

Read models are frozen dataclasses, each with one column list (``COLUMNS``, used by every
statement that reads or returns its rows) and one ``from_row``: an ``asyncpg.Record`` never
leaves the ledger, and protobuf never enters it (the RPC layer converts these).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid
from typing import ClassVar, Final

import asyncpg
from creditwallet.core import limits

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
MEMBER_CAP_PERIODS: Final = ("day", "month")
SUBSCRIPTION_STATUSES: Final = (
    "unspecified",
    "active",
    "trialing",
    "past_due",
    "unpaid",
    "incomplete",
    "incomplete_expired",
    "canceled",
    "paused",
)

# Default lifetimes of lots; None means the lot never expires. Subscription lots get their
# expiry from the billing period, not from here.
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
    """The ``credits`` row of one user, as its writer locked or left it.

    ``updated_at`` is the time of the account's last write: the account's own clock, which
    every later write of the account starts from (``accounts.ledger_time``), so the history
    of one account never goes back in time. ``last_transaction_id`` is its newest history row.
    """

    COLUMNS: ClassVar[str] = (
        "user_id, balance_micros, held_micros, debt_micros, next_expiry_at, created_at, "
        "updated_at, last_transaction_id, overdraft_limit_micros, restricted_lots"
    )

    user_id: str
    balance_micros: int
    held_micros: int
    debt_micros: int
    next_expiry_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime
    last_transaction_id: int | None
    # How far below zero debits may take the available balance, as debt.
    overdraft_limit_micros: int = 0
    # Ever granted a lot restricted to some agents (until then every lot applies to any debit).
    restricted_lots: bool = False

    @property
    def available_micros(self) -> int:
        return self.balance_micros - self.held_micros

    @property
    def live_micros(self) -> int:
        """What the live lots hold (balance = lots + held - debt)."""
        return self.available_micros + self.debt_micros

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Account:
        return cls(
            user_id=row["user_id"],
            balance_micros=row["balance_micros"],
            held_micros=row["held_micros"],
            debt_micros=row["debt_micros"],
            next_expiry_at=row["next_expiry_at"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            last_transaction_id=row["last_transaction_id"],
            overdraft_limit_micros=row["overdraft_limit_micros"],
            restricted_lots=row["restricted_lots"],
        )

    def sweep_due(self, now: dt.datetime) -> bool:
        return self.next_expiry_at is not None and self.next_expiry_at <= now


@dataclasses.dataclass(frozen=True)
class Balances:
    """An account's figures right after a request: what every write's reply reports."""

    balance_micros: int
    held_micros: int
    debt_micros: int
    available_micros: int
    last_transaction_id: int | None

    @classmethod
    def of(cls, account: Account) -> Balances:
        return cls(
            account.balance_micros,
            account.held_micros,
            account.debt_micros,
            account.available_micros,
            account.last_transaction_id,
        )


@dataclasses.dataclass(frozen=True)
class Lot:
    COLUMNS: ClassVar[str] = (
        "lot_id, source, amount_micros, remaining_micros, granted_at, expires_at, priority, "
        "agent_ids"
    )

    lot_id: int
    source: str
    amount_micros: int
    remaining_micros: int
    granted_at: dt.datetime
    expires_at: dt.datetime | None
    # Lower burns first (0-100); the agents it may pay for, empty for any.
    priority: int = limits.LOT_PRIORITY_DEFAULT
    agent_ids: tuple[str, ...] = ()

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Lot:
        return cls(
            lot_id=row["lot_id"],
            source=row["source"],
            amount_micros=row["amount_micros"],
            remaining_micros=row["remaining_micros"],
            granted_at=row["granted_at"],
            expires_at=row["expires_at"],
            priority=row["priority"],
            agent_ids=tuple(row["agent_ids"]),
        )

    def applies_to(self, agent_id: str | None) -> bool:
        return not self.agent_ids or agent_id in self.agent_ids


@dataclasses.dataclass(frozen=True)
class Hold:
    """A row of ``holds``: credits reserved by Authorize until Capture, Void or expiry."""

    COLUMNS: ClassVar[str] = (
        "hold_id, user_id, status, amount_micros, captured_micros, expires_at, created_at"
    )

    hold_id: uuid.UUID
    user_id: str
    status: str
    amount_micros: int
    captured_micros: int
    expires_at: dt.datetime
    created_at: dt.datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Hold:
        return cls(
            hold_id=row["hold_id"],
            user_id=row["user_id"],
            status=row["status"],
            amount_micros=row["amount_micros"],
            captured_micros=row["captured_micros"],
            expires_at=row["expires_at"],
            created_at=row["created_at"],
        )


@dataclasses.dataclass(frozen=True)
class Transaction:
    COLUMNS: ClassVar[str] = (
        "transaction_id, user_id, type, source, amount_micros, balance_after_micros, "
        "request_id, agent_id, quantity, session_id, hold_id, related_transaction_id, "
        "metadata, created_at, member_id, (SELECT o.amount_micros FROM debit_overdrafts o "
        "WHERE o.user_id = credit_transactions.user_id "
        "AND o.transaction_id = credit_transactions.transaction_id) AS overdraft_micros"
    )

    transaction_id: int
    user_id: str
    type: str
    source: str | None
    amount_micros: int
    balance_after_micros: int
    request_id: str | None
    agent_id: str | None
    quantity: int | None
    session_id: str | None
    hold_id: uuid.UUID | None
    related_transaction_id: int | None
    metadata: dict[str, str]
    created_at: dt.datetime
    member_id: str | None
    # For a debit: the part no lot paid, taken as debt on overdraft.
    overdraft_micros: int = 0

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Transaction:
        return cls(
            transaction_id=row["transaction_id"],
            user_id=row["user_id"],
            type=row["type"],
            source=row["source"],
            amount_micros=row["amount_micros"],
            balance_after_micros=row["balance_after_micros"],
            request_id=row["request_id"],
            agent_id=row["agent_id"],
            quantity=row["quantity"],
            session_id=row["session_id"],
            hold_id=row["hold_id"],
            related_transaction_id=row["related_transaction_id"],
            metadata=json.loads(row["metadata"]) if row["metadata"] else {},
            created_at=row["created_at"],
            member_id=row["member_id"],
            overdraft_micros=row["overdraft_micros"] or 0,
        )


@dataclasses.dataclass(frozen=True)
class AgentPrice:
    COLUMNS: ClassVar[str] = "agent_id, price_micros, unit, active, updated_at"

    agent_id: str
    price_micros: int
    unit: str
    active: bool
    updated_at: dt.datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> AgentPrice:
        return cls(
            agent_id=row["agent_id"],
            price_micros=row["price_micros"],
            unit=row["unit"],
            active=row["active"],
            updated_at=row["updated_at"],
        )


@dataclasses.dataclass(frozen=True)
class Subscription:
    COLUMNS: ClassVar[str] = (
        "subscription_id, customer_id, user_id, status, price_id, period_credits_micros, "
        "current_period_start, current_period_end, cancel_at_period_end, last_event_at"
    )

    subscription_id: str
    customer_id: str
    user_id: str | None
    status: str
    price_id: str
    period_credits_micros: int
    current_period_start: dt.datetime | None
    current_period_end: dt.datetime | None
    cancel_at_period_end: bool
    last_event_at: dt.datetime | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Subscription:
        return cls(
            subscription_id=row["subscription_id"],
            customer_id=row["customer_id"],
            user_id=row["user_id"],
            status=row["status"],
            price_id=row["price_id"],
            period_credits_micros=row["period_credits_micros"],
            current_period_start=row["current_period_start"],
            current_period_end=row["current_period_end"],
            cancel_at_period_end=row["cancel_at_period_end"],
            last_event_at=row["last_event_at"],
        )
