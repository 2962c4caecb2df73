"""How the CLI shows responses: aligned text for people, exact JSON for machines.

Why not ``json_format.MessageToDict``: proto3 JSON writes int64 as strings, so a script would
have to parse every amount; ``message_to_dict`` keeps the shape (snake_case field names, enum
names, RFC 3339 timestamps, unset messages left out) but keeps integers as JSON integers, and
prints every scalar field, defaults included, so ``"replayed": false`` is never missing.

Text output shows amounts as exact decimal credits (``clients.units.format_credits``: six
decimals at most, trailing zeros stripped), so nothing is rounded on the way to the screen.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC
from typing import Any, cast

from creditwallet.core.units import MICROS_PER_CREDIT, format_credits
from creditwallet.v1 import admin_service_pb2 as admin_pb2
from creditwallet.v1 import common_pb2
from creditwallet.v1 import wallet_service_pb2 as wallet_pb2
from google.protobuf.descriptor import EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

COLUMN_GAP = "  "


def message_to_dict(message: Message) -> dict[str, Any]:
    """A JSON-ready dict of ``message`` with integers kept as integers."""
    result: dict[str, Any] = {}
    fields = cast(Sequence[FieldDescriptor], message.DESCRIPTOR.fields)
    for field in fields:
        value = getattr(message, field.name)
        map_value_field = _map_value_field(field)
        if map_value_field is not None:
            result[field.name] = {key: _value(map_value_field, item) for key, item in value.items()}
        elif field.is_repeated:
            result[field.name] = [_value(field, item) for item in value]
        elif field.has_presence and not message.HasField(field.name):
            continue
        else:
            result[field.name] = _value(field, value)
    return result


def to_json(message: Message) -> str:
    return json.dumps(message_to_dict(message), indent=2, ensure_ascii=False)


def _map_value_field(field: FieldDescriptor) -> FieldDescriptor | None:
    """The value field of a map field's entry type; None for any other field."""
    entry = field.message_type
    if entry is None or not entry.GetOptions().map_entry:
        return None
    return entry.fields_by_name["value"]


def _value(field: FieldDescriptor, value: Any) -> Any:
    if isinstance(value, Timestamp):
        return value.ToJsonString()
    if isinstance(value, Message):
        return message_to_dict(value)
    if field.enum_type is not None:
        return _enum_name(field.enum_type, value)
    return value


def _enum_name(enum: EnumDescriptor, number: int) -> str | int:
    described = enum.values_by_number.get(number)
    return described.name if described is not None else number


def enum_label(enum: EnumDescriptor, number: int) -> str:
    """``TRANSACTION_TYPE_DEBIT`` -> ``debit``: the enum's prefix is implied by the column."""
    prefix = _enum_prefix(enum)
    name = _enum_name(enum, number)
    return name.removeprefix(prefix).lower() if isinstance(name, str) else str(name)


def _enum_prefix(enum: EnumDescriptor) -> str:
    return enum.values_by_number[0].name.removesuffix("UNSPECIFIED")


def timestamp_text(moment: Timestamp, unset: str = "-") -> str:
    if moment.seconds == 0 and moment.nanos == 0:
        return unset
    return moment.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], right: frozenset[int]) -> str:
    """Columns padded to their widest cell; columns in ``right`` (amounts) right-aligned,
    with their decimal points lined up."""
    body = [list(row) for row in rows]
    for index in right:
        aligned = _align_decimal_points([row[index] for row in body])
        for row, cell in zip(body, aligned, strict=True):
            row[index] = cell
    cells = [list(headers), *body]
    widths = [max(len(row[index]) for row in cells) for index in range(len(headers))]
    lines = []
    for row in cells:
        padded = [
            cell.rjust(width) if index in right else cell.ljust(width)
            for index, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append(COLUMN_GAP.join(padded).rstrip())
    return "\n".join(lines)


def _align_decimal_points(cells: Sequence[str]) -> list[str]:
    """Pads on the right so that, right-justified, "1.5", "10" and "0.25" line up on the point."""

    def tail(cell: str) -> int:  # characters from the decimal point to the end
        return len(cell) - cell.index(".") if "." in cell else 0

    width = max((tail(cell) for cell in cells), default=0)
    return [cell + " " * (width - tail(cell)) for cell in cells]


def credits(micros: int) -> str:
    """An amount for ``pairs``: exact decimal credits with the unit spelled out."""
    unit = "credit" if abs(micros) == MICROS_PER_CREDIT else "credits"
    return f"{format_credits(micros)} {unit}"


def pairs(items: Sequence[tuple[str, str]]) -> str:
    """``name  value`` lines with the values aligned."""
    width = max(len(name) for name, _ in items)
    return "\n".join(f"{name.ljust(width)}{COLUMN_GAP}{value}".rstrip() for name, value in items)


def yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


_LOT_SOURCE = common_pb2.LotSource.DESCRIPTOR
_TRANSACTION_TYPE = common_pb2.TransactionType.DESCRIPTOR
_SUBSCRIPTION_STATUS = common_pb2.SubscriptionStatus.DESCRIPTOR


def balance_text(balance: wallet_pb2.GetBalanceResponse) -> str:
    items = [
        ("user", balance.user_id),
        ("available", credits(balance.available_micros)),
        ("held", credits(balance.held_micros)),
        ("debt", credits(balance.debt_micros)),
    ]
    if balance.HasField("subscription"):
        subscription = balance.subscription
        status = enum_label(_SUBSCRIPTION_STATUS, subscription.status)
        period_end = timestamp_text(subscription.current_period_end)
        items.append(("subscription", f"{status}, period ends {period_end}"))
    items.append(("streak", streak_summary(balance.streak)))
    return pairs(items) + "\n\n" + lots_text(balance.lots)


def lots_text(groups: Iterable[common_pb2.LotGroup]) -> str:
    rows = [
        [
            enum_label(_LOT_SOURCE, lot.source),
            format_credits(lot.remaining_micros),
            format_credits(lot.amount_micros),
            timestamp_text(lot.granted_at),
            timestamp_text(lot.expires_at, unset="never"),
        ]
        for group in groups
        for lot in group.lots
    ]
    headers = ["SOURCE", "REMAINING", "AMOUNT", "GRANTED_AT", "EXPIRES_AT"]
    return table(headers, rows, right=frozenset({1, 2})) if rows else "no live lots"


def streak_summary(streak: common_pb2.Streak) -> str:
    text = f"{streak.current_days} days (longest {streak.longest_days})"
    if streak.next_milestone_days:
        reward = format_credits(streak.next_milestone_reward_micros)
        text += f", next milestone {streak.next_milestone_days} days: +{reward}"
    if streak.grace_day_used:
        text += ", grace day used"
    return text


def streak_text(streak: common_pb2.Streak) -> str:
    return pairs(
        [
            ("current", f"{streak.current_days} days"),
            ("longest", f"{streak.longest_days} days"),
            ("next milestone", _days(streak.next_milestone_days) or "none left"),
            ("next reward", credits(streak.next_milestone_reward_micros)),
            ("grace day used", yes_no(streak.grace_day_used)),
            ("last active", streak.last_active_date or "never"),
        ]
    )


def _days(days: int) -> str:
    return f"{days} days" if days else ""


def reward_items(reward: common_pb2.StreakReward) -> list[tuple[str, str]]:
    amount = credits(reward.amount_micros)
    return [("streak reward", f"+{amount} ({reward.milestone_days}-day milestone)")]


def transactions_text(transactions: Sequence[common_pb2.Transaction]) -> str:
    rows = [
        [
            timestamp_text(row.created_at),
            enum_label(_TRANSACTION_TYPE, row.type),
            format_credits(row.amount_micros),
            format_credits(row.balance_after_micros),
            _transaction_detail(row),
            row.transaction_id,
        ]
        for row in transactions
    ]
    headers = ["CREATED_AT", "TYPE", "AMOUNT", "BALANCE", "DETAIL", "TRANSACTION_ID"]
    return table(headers, rows, right=frozenset({2, 3})) if rows else "no transactions"


def _transaction_detail(row: common_pb2.Transaction) -> str:
    if row.agent_id:
        return f"{row.agent_id} x{row.quantity}"
    if row.source:
        return enum_label(_LOT_SOURCE, row.source)
    if row.related_transaction_id:
        return f"of {row.related_transaction_id}"
    return row.hold_id


def prices_text(prices: Sequence[common_pb2.AgentPrice]) -> str:
    rows = [
        [
            price.agent_id,
            format_credits(price.price_micros),
            price.unit,
            yes_no(price.active),
            timestamp_text(price.updated_at),
        ]
        for price in prices
    ]
    headers = ["AGENT", "PRICE", "UNIT", "ACTIVE", "UPDATED_AT"]
    return table(headers, rows, right=frozenset({1})) if rows else "no agent prices"


def stats_text(stats: admin_pb2.GetStatsResponse) -> str:
    summary = pairs(
        [
            ("total users", str(stats.total_users)),
            ("total credits", credits(stats.total_credits_micros)),
            ("average balance", credits(stats.avg_balance_micros)),
        ]
    )
    rows = [
        [
            enum_label(_TRANSACTION_TYPE, total.type),
            str(total.count),
            format_credits(total.total_amount_micros),
        ]
        for total in stats.last_day
    ]
    last_day = table(["TYPE", "COUNT", "TOTAL"], rows, right=frozenset({1, 2}))
    return f"{summary}\n\nlast 24 hours\n{last_day}"


def verify_text(report: admin_pb2.VerifyLedgerResponse) -> str:
    verdict = "ok" if report.ok else f"{len(report.violations)} violation(s)"
    head = pairs([("ledger", verdict), ("accounts checked", str(report.accounts_checked))])
    if not report.violations:
        return head
    rows = [
        [str(violation.invariant), violation.user_id or "-", violation.detail]
        for violation in report.violations
    ]
    return head + "\n\n" + table(["INVARIANT", "USER", "DETAIL"], rows, right=frozenset({0}))
