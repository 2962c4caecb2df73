"""How the CLI shows responses: rich tables for people, the protobuf JSON mapping for scripts.

Why rich: column widths, alignment, wrapping to the terminal, colour only on a terminal (and
never with ``NO_COLOR``), and the rollover's progress bar are a library's job; this module only
says which facts go in which column. Output that is not a terminal is plain text, wide enough
not to wrap, so it can be piped and grepped.

Amounts are exact: ``Amounts.text`` shows decimal credits (``format_credits``: six decimals at
most, trailing zeros stripped) or, with ``--micros``, integer micro-credits. ``--json`` goes
through ``creditwallet.core.protojson``, the same form the gateway answers in.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC

from creditwallet.core import limits
from creditwallet.core.units import MICROS_PER_CREDIT, format_credits
from creditwallet.v1 import admin_service_pb2 as admin_pb2
from creditwallet.v1 import billing_service_pb2 as billing_pb2
from creditwallet.v1 import common_pb2
from creditwallet.v1 import wallet_service_pb2 as wallet_pb2
from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.timestamp_pb2 import Timestamp
from rich import box
from rich.console import Console, Group, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

# Width of output that is not a terminal: wide enough that a history row never wraps.


def console(*, stderr: bool = False) -> Console:
    """A console on stdout (or stderr): the terminal's width, else a fixed one, no colour."""
    stream = sys.stderr if stderr else sys.stdout
    terminal = stream.isatty()
    return Console(
        stderr=stderr,
        width=None if terminal else limits.CLI_PLAIN_WIDTH,
        highlight=False,
        emoji=False,
        soft_wrap=False,
    )


def show(view: RenderableType) -> None:
    """Print ``view`` on stdout; off a terminal, without the padding at the ends of lines."""
    out = console()
    if out.is_terminal:
        out.print(view)
        return
    with out.capture() as captured:
        out.print(view)
    text = "\n".join(line.rstrip() for line in captured.get().splitlines())
    sys.stdout.write(text + "\n")


@dataclasses.dataclass(frozen=True)
class Amounts:
    """Shows amounts in credits, or in micro-credits when ``micros`` (``--micros``)."""

    micros: bool = False

    def text(self, micros: int) -> str:
        """An amount with its unit: ``2.5 credits``, ``1 credit``, ``2500000 micros``."""
        if self.micros:
            return f"{micros} micros"
        unit = "credit" if abs(micros) == MICROS_PER_CREDIT else "credits"
        return f"{format_credits(micros)} {unit}"

    def figure(self, micros: int) -> str:
        """An amount for a table column whose header names the unit."""
        return str(micros) if self.micros else format_credits(micros)

    @property
    def unit(self) -> str:
        return "micros" if self.micros else "credits"


def days(count: int) -> str:
    return f"{count} day" if count == 1 else f"{count} days"


def enum_label(enum: EnumDescriptor, number: int) -> str:
    """``TRANSACTION_TYPE_DEBIT`` -> ``debit``: the enum's prefix is implied by the column."""
    prefix = enum.values_by_number[0].name.removesuffix("UNSPECIFIED")
    described = enum.values_by_number.get(number)
    return described.name.removeprefix(prefix).lower() if described else str(number)


def timestamp_text(moment: Timestamp, unset: str = "-") -> str:
    if moment.seconds == 0 and moment.nanos == 0:
        return unset
    return moment.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def pairs(items: Sequence[tuple[str, str]]) -> Table:
    """``name  value`` rows, the values aligned."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for name, value in items:
        grid.add_row(name, Text(value))
    return grid


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, right: frozenset[int]) -> Table:
    """A table whose columns in ``right`` (amounts, counts) are right-aligned."""
    result = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for index, header in enumerate(headers):
        result.add_column(header, justify="right" if index in right else "left", no_wrap=True)
    for row in rows:
        result.add_row(*(Text(cell) for cell in row))
    return result


def stack(*parts: RenderableType) -> Group:
    """Parts one under the other, a blank line between them."""
    spaced: list[RenderableType] = []
    for part in parts:
        if spaced:
            spaced.append(Text(""))
        spaced.append(part)
    return Group(*spaced)


_LOT_SOURCE = common_pb2.LotSource.DESCRIPTOR
_TRANSACTION_TYPE = common_pb2.TransactionType.DESCRIPTOR
_SUBSCRIPTION_STATUS = common_pb2.SubscriptionStatus.DESCRIPTOR


def balance(reply: wallet_pb2.GetBalanceResponse, amounts: Amounts, *, agent_id: str = "") -> Group:
    items = [
        ("user", reply.user_id),
        ("as of", timestamp_text(reply.as_of)),
        ("available", amounts.text(reply.available_micros)),
        ("held", amounts.text(reply.held_micros)),
        ("debt", amounts.text(reply.debt_micros)),
    ]
    if reply.HasField("available_for_agent_micros"):
        items.append((f"available for {agent_id}", amounts.text(reply.available_for_agent_micros)))
    if reply.overdraft_limit_micros:
        items.append(("overdraft limit", amounts.text(reply.overdraft_limit_micros)))
    if reply.HasField("subscription"):
        subscription = reply.subscription
        status = enum_label(_SUBSCRIPTION_STATUS, subscription.status)
        period_end = timestamp_text(subscription.current_period_end)
        items.append(("subscription", f"{status}, period ends {period_end}"))
    if reply.HasField("streak"):
        items.append(("streak", streak_summary(reply.streak, amounts)))
    return stack(pairs(items), lots(reply.lots, amounts))


def lots(groups: Iterable[common_pb2.LotGroup], amounts: Amounts) -> RenderableType:
    rows = [
        [
            enum_label(_LOT_SOURCE, lot.source),
            amounts.figure(lot.remaining_micros),
            amounts.figure(lot.amount_micros),
            timestamp_text(lot.granted_at),
            timestamp_text(lot.expires_at, unset="never"),
            str(lot.priority),
            ",".join(lot.agent_ids) or "any",
        ]
        for group in groups
        for lot in group.lots
    ]
    if not rows:
        return Text("no live lots")
    unit = amounts.unit.upper()
    headers = [
        "SOURCE",
        f"REMAINING ({unit})",
        f"AMOUNT ({unit})",
        "GRANTED_AT",
        "EXPIRES_AT",
        "PRIORITY",
        "AGENTS",
    ]
    return table(headers, rows, right=frozenset({1, 2}))


def streak_summary(streak: common_pb2.Streak, amounts: Amounts) -> str:
    text = f"{days(streak.current_days)} (longest {days(streak.longest_days)})"
    if streak.next_milestone_days:
        reward = amounts.text(streak.next_milestone_reward_micros)
        text += f", next milestone at {days(streak.next_milestone_days)}: +{reward}"
    if streak.grace_day_used:
        text += ", grace day used"
    return text


def streak(reply: common_pb2.Streak, amounts: Amounts) -> Table:
    next_milestone = days(reply.next_milestone_days) if reply.next_milestone_days else "none left"
    return pairs(
        [
            ("current", days(reply.current_days)),
            ("longest", days(reply.longest_days)),
            ("next milestone", next_milestone),
            ("next reward", amounts.text(reply.next_milestone_reward_micros)),
            ("grace day used", yes_no(reply.grace_day_used)),
            ("last active", reply.last_active_date or "never"),
        ]
    )


def reward_items(reward: common_pb2.StreakReward, amounts: Amounts) -> list[tuple[str, str]]:
    amount = amounts.text(reward.amount_micros)
    return [("streak reward", f"+{amount} ({days(reward.milestone_days)} milestone)")]


def transactions(rows: Sequence[common_pb2.Transaction], amounts: Amounts) -> RenderableType:
    if not rows:
        return Text("no transactions")
    cells = [
        [
            timestamp_text(row.created_at),
            enum_label(_TRANSACTION_TYPE, row.type),
            amounts.figure(row.amount_micros),
            amounts.figure(row.balance_after_micros),
            _transaction_detail(row),
            row.transaction_id,
        ]
        for row in rows
    ]
    unit = amounts.unit.upper()
    headers = ["CREATED_AT", "TYPE", f"AMOUNT ({unit})", "BALANCE", "DETAIL", "TRANSACTION_ID"]
    return table(headers, cells, right=frozenset({2, 3}))


def _transaction_detail(row: common_pb2.Transaction) -> str:
    detail = _what(row)
    return f"{detail} by {row.member_id}".strip() if row.member_id else detail


def _what(row: common_pb2.Transaction) -> str:
    overdraft = f", {row.overdraft_micros} micros on overdraft" if row.overdraft_micros else ""
    if row.agent_id:
        units = f" x{row.quantity}" if row.quantity else ""
        return f"{row.agent_id}{units}{overdraft}"
    if overdraft:
        return overdraft.removeprefix(", ")
    if row.source:
        return enum_label(_LOT_SOURCE, row.source)
    if row.related_transaction_id:
        return f"of {row.related_transaction_id}"
    return row.hold_id


def prices(rows: Sequence[common_pb2.AgentPrice], amounts: Amounts) -> RenderableType:
    if not rows:
        return Text("no agent prices")
    cells = [
        [
            price.agent_id,
            amounts.figure(price.price_micros),
            price.unit,
            yes_no(price.active),
            timestamp_text(price.updated_at),
        ]
        for price in rows
    ]
    headers = ["AGENT", f"PRICE ({amounts.unit.upper()})", "UNIT", "ACTIVE", "UPDATED_AT"]
    return table(headers, cells, right=frozenset({1}))


def stats(reply: admin_pb2.GetStatsResponse, amounts: Amounts) -> Group:
    summary = pairs(
        [
            ("total users", str(reply.total_users)),
            ("total credits", amounts.text(reply.total_credits_micros)),
            ("average balance", amounts.text(reply.avg_balance_micros)),
        ]
    )
    rows = [
        [
            enum_label(_TRANSACTION_TYPE, total.type),
            str(total.count),
            amounts.figure(total.total_amount_micros),
        ]
        for total in reply.last_day
    ]
    last_day = table(
        ["TYPE (LAST 24 HOURS)", "COUNT", f"TOTAL ({amounts.unit.upper()})"],
        rows,
        right=frozenset({1, 2}),
    )
    return stack(summary, last_day)


def verify(report: admin_pb2.VerifyLedgerResponse) -> RenderableType:
    verdict = "ok" if report.ok else f"{len(report.violations)} violation(s)"
    head = pairs([("ledger", verdict), ("accounts checked", str(report.accounts_checked))])
    if not report.violations:
        return head
    rows = [
        [str(violation.invariant), violation.user_id or "-", violation.detail]
        for violation in report.violations
    ]
    return stack(head, table(["INVARIANT", "USER", "DETAIL"], rows, right=frozenset({0})))


def rollover(summary: billing_pb2.RolloverResponse, amounts: Amounts) -> Table:
    return pairs(
        [
            ("period", summary.period),
            ("accounts processed", str(summary.accounts_processed)),
            ("credits carried", amounts.text(summary.credits_carried_micros)),
            ("credits expired", amounts.text(summary.credits_expired_micros)),
            ("holds released", str(summary.holds_released)),
            ("chunks", str(summary.chunks)),
        ]
    )


def rollover_progress(period: str, *, enabled: bool) -> Progress:
    """The rollover's bar on stderr: accounts rolled over for the month out of all accounts."""
    return Progress(
        TextColumn(f"rollover {period or 'this month'}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("accounts"),
        TimeElapsedColumn(),
        console=console(stderr=True),
        disable=not enabled,
        transient=False,
    )
