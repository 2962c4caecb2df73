"""The ledger's typed results to protobuf replies, and protobuf enums to ledger names.

Enum names are not tabled twice: a ledger name ``top_up`` is the proto value
``LOT_SOURCE_TOP_UP`` (the enum's prefix, upper-cased), and a test checks that every proto
value has its ledger name and back.
"""

from __future__ import annotations

import datetime as dt

from creditwallet.server import errors
from creditwallet.server.ledger import balances, members, stats, streaks, usage
from creditwallet.server.ledger.types import (
    LOT_SOURCES,
    MEMBER_CAP_PERIODS,
    SUBSCRIPTION_STATUSES,
    TRANSACTION_TYPES,
    AgentPrice,
    Hold,
    Lot,
    Subscription,
    Transaction,
)
from creditwallet.v1 import admin_service_pb2 as apb
from creditwallet.v1 import common_pb2 as pb
from creditwallet.v1 import wallet_service_pb2 as wpb
from google.protobuf import timestamp_pb2

SOURCE_TO_PB: dict[str, pb.LotSource.ValueType] = {
    name: pb.LotSource.Value("LOT_SOURCE_" + name.upper()) for name in LOT_SOURCES
}
TYPE_TO_PB: dict[str, pb.TransactionType.ValueType] = {
    name: pb.TransactionType.Value("TRANSACTION_TYPE_" + name.upper()) for name in TRANSACTION_TYPES
}
STATUS_TO_PB: dict[str, pb.SubscriptionStatus.ValueType] = {
    name: pb.SubscriptionStatus.Value("SUBSCRIPTION_STATUS_" + name.upper())
    for name in SUBSCRIPTION_STATUSES
}
PERIOD_TO_PB: dict[str, apb.MemberCapPeriod.ValueType] = {
    name: apb.MemberCapPeriod.Value("MEMBER_CAP_PERIOD_" + name.upper())
    for name in MEMBER_CAP_PERIODS
}
PB_TO_SOURCE: dict[int, str] = {v: k for k, v in SOURCE_TO_PB.items()}
PB_TO_TYPE: dict[int, str] = {v: k for k, v in TYPE_TO_PB.items()}
PB_TO_STATUS: dict[int, str] = {v: k for k, v in STATUS_TO_PB.items()}
PB_TO_PERIOD: dict[int, str] = {v: k for k, v in PERIOD_TO_PB.items()}


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


def status_name(value: int) -> str:
    if value == pb.SUBSCRIPTION_STATUS_UNSPECIFIED or value not in PB_TO_STATUS:
        raise errors.invalid("status", "status must be a known SubscriptionStatus")
    return PB_TO_STATUS[value]


def period_name(value: int) -> str:
    if value not in PB_TO_PERIOD:
        raise errors.invalid("cap_period", "cap_period must be DAY or MONTH")
    return PB_TO_PERIOD[value]


def timestamp(value: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def lot(value: Lot) -> pb.Lot:
    return pb.Lot(
        lot_id=str(value.lot_id),
        source=SOURCE_TO_PB[value.source],
        amount_micros=value.amount_micros,
        remaining_micros=value.remaining_micros,
        granted_at=timestamp(value.granted_at),
        expires_at=timestamp(value.expires_at),
        priority=value.priority,
        agent_ids=value.agent_ids,
    )


def lot_groups(lots: list[Lot]) -> list[pb.LotGroup]:
    """Live lots (already in burn-down order) grouped by source, groups in first-use order."""
    groups: dict[str, pb.LotGroup] = {}
    for value in lots:
        group = groups.get(value.source)
        if group is None:
            group = groups[value.source] = pb.LotGroup(source=SOURCE_TO_PB[value.source])
        group.remaining_micros += value.remaining_micros
        group.lots.append(lot(value))
    return list(groups.values())


def transaction(value: Transaction) -> pb.Transaction:
    return pb.Transaction(
        transaction_id=str(value.transaction_id),
        user_id=value.user_id,
        type=TYPE_TO_PB[value.type],
        source=SOURCE_TO_PB.get(value.source or "", pb.LOT_SOURCE_UNSPECIFIED),
        amount_micros=value.amount_micros,
        balance_after_micros=value.balance_after_micros,
        request_id=value.request_id or "",
        agent_id=value.agent_id or "",
        quantity=value.quantity or 0,
        session_id=value.session_id or "",
        hold_id=str(value.hold_id) if value.hold_id else "",
        related_transaction_id=str(value.related_transaction_id or ""),
        metadata=value.metadata,
        created_at=timestamp(value.created_at),
        overdraft_micros=value.overdraft_micros,
        member_id=value.member_id or "",
    )


def agent_price(value: AgentPrice) -> pb.AgentPrice:
    return pb.AgentPrice(
        agent_id=value.agent_id,
        price_micros=value.price_micros,
        unit=value.unit,
        active=value.active,
        updated_at=timestamp(value.updated_at),
    )


def subscription(value: Subscription | None) -> pb.Subscription | None:
    if value is None:
        return None
    return pb.Subscription(
        subscription_id=value.subscription_id,
        status=STATUS_TO_PB[value.status],
        price_id=value.price_id,
        current_period_start=timestamp(value.current_period_start),
        current_period_end=timestamp(value.current_period_end),
        cancel_at_period_end=value.cancel_at_period_end,
        period_credits_micros=value.period_credits_micros,
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


def balance(view: balances.BalanceView) -> wpb.GetBalanceResponse:
    return wpb.GetBalanceResponse(
        user_id=view.account.user_id,
        available_micros=view.account.available_micros,
        held_micros=view.account.held_micros,
        debt_micros=view.account.debt_micros,
        lots=lot_groups(view.lots),
        subscription=subscription(view.subscription),
        streak=streak(view.streak) if view.streak is not None else None,
        available_for_agent_micros=view.available_for_agent_micros,
        overdraft_limit_micros=view.account.overdraft_limit_micros,
        as_of=timestamp(view.at),
        balance_micros=view.account.balance_micros,
    )


def stats_reply(value: stats.Stats) -> apb.GetStatsResponse:
    return apb.GetStatsResponse(
        total_users=value.total_users,
        total_credits_micros=value.total_credits_micros,
        avg_balance_micros=value.avg_balance_micros,
        last_day=[
            apb.TransactionTypeTotal(
                type=TYPE_TO_PB[t.type], count=t.count, total_amount_micros=t.total_micros
            )
            for t in value.last_day
        ],
    )


def usage_group(row: usage.UsageRow) -> wpb.UsageGroup:
    return wpb.UsageGroup(
        day=row.day.isoformat() if row.day else "",
        agent_id=row.agent_id,
        member_id=row.member_id,
        session_id=row.session_id,
        net_micros=row.net_micros,
        debited_micros=row.debited_micros,
        reversed_micros=row.reversed_micros,
        debit_count=row.debits,
        reversal_count=row.reversals,
    )


def member(value: members.Member) -> apb.Member:
    return apb.Member(
        user_id=value.user_id,
        member_id=value.member_id,
        cap_micros=value.cap_micros,
        cap_period=PERIOD_TO_PB[value.cap_period],
        active=value.active,
        spent_micros=value.spent_micros,
        held_micros=value.held_micros,
        period_end=timestamp(value.period_end),
        created_at=timestamp(value.created_at),
        updated_at=timestamp(value.updated_at),
    )


def hold(value: Hold) -> pb.Hold:
    return pb.Hold(
        hold_id=str(value.hold_id),
        user_id=value.user_id,
        status=pb.HoldStatus.Value("HOLD_STATUS_" + value.status.upper()),
        amount_micros=value.amount_micros,
        captured_micros=value.captured_micros,
        expires_at=timestamp(value.expires_at),
        created_at=timestamp(value.created_at),
    )


def daily_totals_reply(value: stats.DailyTotals) -> apb.GetDailyTotalsResponse:
    return apb.GetDailyTotalsResponse(
        start_date=value.start.isoformat(),
        end_date=value.end.isoformat(),
        totals=[
            apb.DailyTotal(
                date=t.day.isoformat(),
                type=TYPE_TO_PB[t.type],
                count=t.count,
                amount_micros=t.amount_micros,
            )
            for t in value.totals
        ],
        top_agents=[
            apb.AgentSpend(agent_id=a.agent_id, debits=a.debits, spent_micros=a.spent_micros)
            for a in value.top_agents
        ],
    )
