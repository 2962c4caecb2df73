"""Ledger rows and results to protobuf messages, and protobuf enums to ledger names."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable

import asyncpg
from creditwallet.server import errors
from creditwallet.server.ledger import streaks
from creditwallet.v1 import admin_service_pb2 as admin_pb
from creditwallet.v1 import common_pb2 as pb
from google.protobuf import timestamp_pb2

SOURCE_TO_PB = {
    "trial": pb.LOT_SOURCE_TRIAL,
    "subscription": pb.LOT_SOURCE_SUBSCRIPTION,
    "top_up": pb.LOT_SOURCE_TOP_UP,
    "referral": pb.LOT_SOURCE_REFERRAL,
    "streak": pb.LOT_SOURCE_STREAK,
    "promo": pb.LOT_SOURCE_PROMO,
    "adjustment": pb.LOT_SOURCE_ADJUSTMENT,
}
PB_TO_SOURCE: dict[int, str] = {v: k for k, v in SOURCE_TO_PB.items()}

TYPE_TO_PB = {
    "grant": pb.TRANSACTION_TYPE_GRANT,
    "debit": pb.TRANSACTION_TYPE_DEBIT,
    "expire": pb.TRANSACTION_TYPE_EXPIRE,
    "reversal": pb.TRANSACTION_TYPE_REVERSAL,
    "clawback": pb.TRANSACTION_TYPE_CLAWBACK,
    "expiry_change": pb.TRANSACTION_TYPE_EXPIRY_CHANGE,
}
PB_TO_TYPE: dict[int, str] = {v: k for k, v in TYPE_TO_PB.items()}


def source_name(value: int) -> str:
    if value not in PB_TO_SOURCE:
        raise errors.invalid("source", "source must be a known LotSource")
    return PB_TO_SOURCE[value]


def type_name(value: int) -> str | None:
    if value == pb.TRANSACTION_TYPE_UNSPECIFIED:
        return None
    if value not in PB_TO_TYPE:
        raise errors.invalid("type", "type must be a known TransactionType")
    return PB_TO_TYPE[value]


def timestamp(value: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def lot(row: asyncpg.Record) -> pb.Lot:
    return pb.Lot(
        lot_id=str(row["lot_id"]),
        source=SOURCE_TO_PB[row["source"]],
        amount_micros=row["amount_micros"],
        remaining_micros=row["remaining_micros"],
        granted_at=timestamp(row["granted_at"]),
        expires_at=timestamp(row["expires_at"]),
    )


def lot_groups(rows: Iterable[asyncpg.Record]) -> list[pb.LotGroup]:
    """Live lots (already in burn-down order) grouped by source, groups in first-use order."""
    groups: dict[str, pb.LotGroup] = {}
    for row in rows:
        group = groups.get(row["source"])
        if group is None:
            group = groups[row["source"]] = pb.LotGroup(source=SOURCE_TO_PB[row["source"]])
        group.remaining_micros += row["remaining_micros"]
        group.lots.append(lot(row))
    return list(groups.values())


def transaction(row: asyncpg.Record) -> pb.Transaction:
    return pb.Transaction(
        transaction_id=str(row["transaction_id"]),
        user_id=row["user_id"],
        type=TYPE_TO_PB[row["type"]],
        source=SOURCE_TO_PB.get(row["source"] or "", pb.LOT_SOURCE_UNSPECIFIED),
        amount_micros=row["amount_micros"],
        balance_after_micros=row["balance_after_micros"],
        request_id=row["request_id"] or "",
        agent_id=row["agent_id"] or "",
        quantity=row["quantity"] or 0,
        session_id=row["session_id"] or "",
        hold_id=str(row["hold_id"]) if row["hold_id"] else "",
        related_transaction_id=str(row["related_transaction_id"] or ""),
        metadata=json.loads(row["metadata"]) if row["metadata"] else {},
        created_at=timestamp(row["created_at"]),
    )


def agent_price(row: asyncpg.Record) -> pb.AgentPrice:
    return pb.AgentPrice(
        agent_id=row["agent_id"],
        price_micros=row["price_micros"],
        unit=row["unit"],
        active=row["active"],
        updated_at=timestamp(row["updated_at"]),
    )


SUBSCRIPTION_STATUS_TO_PB = {
    "unspecified": pb.SUBSCRIPTION_STATUS_UNSPECIFIED,
    "active": pb.SUBSCRIPTION_STATUS_ACTIVE,
    "trialing": pb.SUBSCRIPTION_STATUS_TRIALING,
    "past_due": pb.SUBSCRIPTION_STATUS_PAST_DUE,
    "unpaid": pb.SUBSCRIPTION_STATUS_UNPAID,
    "incomplete": pb.SUBSCRIPTION_STATUS_INCOMPLETE,
    "incomplete_expired": pb.SUBSCRIPTION_STATUS_INCOMPLETE_EXPIRED,
    "canceled": pb.SUBSCRIPTION_STATUS_CANCELED,
    "paused": pb.SUBSCRIPTION_STATUS_PAUSED,
}


def subscription(row: asyncpg.Record | None) -> pb.Subscription | None:
    if row is None:
        return None
    return pb.Subscription(
        subscription_id=row["subscription_id"],
        status=SUBSCRIPTION_STATUS_TO_PB[row["status"]],
        price_id=row["price_id"],
        current_period_start=timestamp(row["current_period_start"]),
        current_period_end=timestamp(row["current_period_end"]),
        cancel_at_period_end=row["cancel_at_period_end"],
        period_credits_micros=row["period_credits_micros"],
    )


def streak_reward(reward: streaks.Reward | None) -> pb.StreakReward | None:
    if reward is None:
        return None
    return pb.StreakReward(
        milestone_days=reward.milestone_days,
        amount_micros=reward.amount_micros,
        transaction_id=str(reward.transaction_id),
    )


def streak(view: streaks.View) -> pb.Streak:
    last = view.last_active_day
    return pb.Streak(
        current_days=view.current_days,
        longest_days=view.longest_days,
        next_milestone_days=view.next_milestone_days,
        next_milestone_reward_micros=view.next_milestone_reward_micros,
        grace_day_used=view.grace_day_used,
        last_active_date=last.isoformat() if last else "",
    )


def type_total(row: asyncpg.Record, micros: int) -> admin_pb.TransactionTypeTotal:
    return admin_pb.TransactionTypeTotal(
        type=TYPE_TO_PB[row["type"]], count=row["count"], total_amount_micros=micros
    )
