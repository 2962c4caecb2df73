"""``creditwallet usage`` and ``creditwallet members set|list``: team wallets and usage reports.

Apart from ``clients.cli`` so that the grammar and commands of these features live together;
``clients.arguments`` calls ``add_commands`` and ``clients.cli`` wraps ``COMMANDS``. Each
command returns (response message, view, exit code).

``usage`` shows a table of the groups and, when grouped by day, a bar per day of the net
credits spent: bars are whole block characters scaled to the largest day (a bar is drawn for
every day of the range, so a day without spend shows as empty, not missing).
"""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any, Final

from creditwallet.client import render
from creditwallet.client.render import Amounts
from creditwallet.client.wallet import CreditWalletClient
from creditwallet.core import limits
from creditwallet.v1 import admin_service_pb2 as admin_pb2
from creditwallet.v1 import wallet_service_pb2 as wallet_pb2
from google.protobuf.message import Message
from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

Result = tuple[Message, RenderableType, int]
Command = Callable[[CreditWalletClient, argparse.Namespace], Result]

USAGE_KEYS: Final = ("day", "agent", "member", "session")


def add_commands(
    commands: Any, command: Callable[..., argparse.ArgumentParser], add_request_id: Any
) -> None:
    leaf = command(
        commands,
        "usage",
        "Show a user's credits spent per day, agent, member or session, with a chart.",
        description="Show a user's credits spent (debits net of their reversals) and counts\n"
        "per group over whole UTC days. Grouped by day, a bar chart of each day follows.\n"
        "Default: the last 30 days, by day.",
    )
    leaf.add_argument("user", metavar="USER")
    leaf.add_argument(
        "--by",
        type=_keys,
        default=("day",),
        help="comma-separated keys among day,agent,member,session (default day)",
    )
    leaf.add_argument("--from", dest="first_day", type=_date, help="first UTC day, YYYY-MM-DD")
    leaf.add_argument("--to", dest="last_day", type=_date, help="last UTC day (default today)")

    group = commands.add_parser("members", help="Set or list the members of a team wallet.")
    sub = group.add_subparsers(dest="members_command", required=True, metavar="members")
    leaf = command(
        sub,
        "set",
        "Create or replace a member of an account, with its spending cap.",
        parent="members",
        description="Create or replace a member of an account: it may spend up to --cap\n"
        "credits per UTC --period (day or month), holds included. --inactive refuses its\n"
        "debits and holds (MEMBER_NOT_FOUND) without forgetting what it spent.",
    )
    leaf.add_argument("user", metavar="USER")
    leaf.add_argument("member", metavar="MEMBER")
    leaf.add_argument("--cap", required=True, help="credits per period, e.g. 25")
    leaf.add_argument("--period", choices=["day", "month"], default="day")
    leaf.add_argument("--inactive", action="store_true", help="refuse the member's spending")
    leaf = command(sub, "list", "List an account's members and their spend.", parent="members")
    leaf.add_argument("user", metavar="USER")


def _keys(text: str) -> tuple[str, ...]:
    """The keys in the order the groups are sorted by (day, agent, member, session)."""
    keys = [k.strip().lower() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in USAGE_KEYS]
    if unknown or len(set(keys)) != len(keys):
        raise argparse.ArgumentTypeError(
            f"keys are distinct names among {','.join(USAGE_KEYS)}: {text!r}"
        )
    return tuple(k for k in USAGE_KEYS if k in keys)


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date YYYY-MM-DD: {text!r}") from None


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


def _usage(client: CreditWalletClient, args: argparse.Namespace) -> Result:
    last = args.last_day or dt.datetime.now(dt.UTC).date()
    first = args.first_day or last - dt.timedelta(days=limits.CLI_USAGE_DAYS_DEFAULT - 1)
    merged = wallet_pb2.GetUsageResponse()
    for _ in range(limits.CLI_PAGES_MAX):
        page = client.get_usage(
            args.user,
            start_time=_midnight(first),
            end_time=_midnight(last + dt.timedelta(days=1)),
            group_by=args.by,
            page_size=limits.USAGE_PAGE_SIZE_MAX,
            page_token=merged.next_page_token,
        )
        merged.user_id = page.user_id
        merged.groups.extend(page.groups)
        merged.next_page_token = page.next_page_token
        if not page.next_page_token:
            break
    amounts = Amounts(micros=args.micros)
    view: RenderableType = usage_table(merged.groups, args.by, amounts)
    if "day" in args.by:
        view = render.stack(view, day_chart(merged.groups, first, last, amounts))
    return merged, view, 0


def usage_table(
    groups: Sequence[wallet_pb2.UsageGroup], keys: Sequence[str], amounts: Amounts
) -> RenderableType:
    if not groups:
        return Text("no usage in the range")
    unit = amounts.unit.upper()
    headers = [k.upper() for k in keys] + [
        f"NET ({unit})",
        f"DEBITED ({unit})",
        f"REVERSED ({unit})",
        "DEBITS",
        "REVERSALS",
    ]
    rows = [
        [
            *(_key(g, k) for k in keys),
            amounts.figure(g.net_micros),
            amounts.figure(g.debited_micros),
            amounts.figure(g.reversed_micros),
            str(g.debit_count),
            str(g.reversal_count),
        ]
        for g in groups
    ]
    return render.table(headers, rows, right=frozenset(range(len(keys), len(keys) + 5)))


def _key(group: wallet_pb2.UsageGroup, key: str) -> str:
    value = {
        "day": group.day,
        "agent": group.agent_id,
        "member": group.member_id,
        "session": group.session_id,
    }[key]
    return value or "-"


def day_totals(
    groups: Sequence[wallet_pb2.UsageGroup], first: dt.date, last: dt.date
) -> list[tuple[dt.date, int]]:
    """Net micros per day of [first, last], every day present (0 when nothing was spent)."""
    totals: dict[str, int] = {}
    for g in groups:
        totals[g.day] = totals.get(g.day, 0) + g.net_micros
    days = (last - first).days + 1
    return [
        (day, totals.get(day.isoformat(), 0))
        for day in (first + dt.timedelta(days=i) for i in range(days))
    ]


def bar(value: int, largest: int, width: int = limits.CLI_USAGE_CHART_WIDTH) -> str:
    """A bar of whole blocks, in integers only: a positive value never shows as empty."""
    if value <= 0 or largest <= 0:
        return ""
    return "█" * max(1, value * width // largest)


def day_chart(
    groups: Sequence[wallet_pb2.UsageGroup], first: dt.date, last: dt.date, amounts: Amounts
) -> Table:
    totals = day_totals(groups, first, last)
    largest = max((v for _, v in totals), default=0)
    chart = Table.grid(padding=(0, 1))
    chart.add_column()
    chart.add_column(justify="right")
    chart.add_column()
    for day, value in totals:
        chart.add_row(day.isoformat(), amounts.figure(value), bar(value, largest))
    return chart


def _member_rows(members: Sequence[admin_pb2.Member], amounts: Amounts) -> RenderableType:
    if not members:
        return Text("no members")
    unit = amounts.unit.upper()
    headers = [
        "MEMBER",
        f"CAP ({unit})",
        "PERIOD",
        "ACTIVE",
        f"SPENT ({unit})",
        f"HELD ({unit})",
        "PERIOD_END",
    ]
    rows = [
        [
            m.member_id,
            amounts.figure(m.cap_micros),
            render.enum_label(admin_pb2.MemberCapPeriod.DESCRIPTOR, m.cap_period),
            render.yes_no(m.active),
            amounts.figure(m.spent_micros),
            amounts.figure(m.held_micros),
            render.timestamp_text(m.period_end),
        ]
        for m in members
    ]
    return render.table(headers, rows, right=frozenset({1, 4, 5}))


def _members_set(client: CreditWalletClient, args: argparse.Namespace) -> Result:
    reply = client.set_member(
        args.user,
        args.member,
        cap_micros=args.cap,
        cap_period=args.period,
        active=not args.inactive,
    )
    return reply, _member_rows([reply.member], Amounts(micros=args.micros)), 0


def _members_list(client: CreditWalletClient, args: argparse.Namespace) -> Result:
    merged = admin_pb2.ListMembersResponse()
    for _ in range(limits.CLI_PAGES_MAX):
        page = client.list_members(
            args.user, page_size=limits.PAGE_SIZE_MAX, page_token=merged.next_page_token
        )
        merged.members.extend(page.members)
        merged.next_page_token = page.next_page_token
        if not page.next_page_token:
            break
    return merged, _member_rows(merged.members, Amounts(micros=args.micros)), 0


COMMANDS: Final[dict[str, Command]] = {
    "usage": _usage,
    "members set": _members_set,
    "members list": _members_list,
}
