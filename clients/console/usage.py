"""Where an account's 30-day charts get their figures: one function, so its source is one place.

The spend per day and agent is the ledger's usage report (``GetUsage`` by day and agent, net of
reversals, read from rollups: its cost follows the groups, not the debits). The balance at the
end of each day is read from the account's history (``ListTransactions``, newest first, pages
of ``PAGE_SIZE_MAX``) back to the start of the window, at most ``CONSOLE_CHART_PAGES_MAX``
pages: an account with more rows than that in 30 days gets a balance chart of its most recent
rows only, and the result says from when (``complete`` false, ``covers_from``), which the page
shows. Days are UTC days.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt

from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.core import limits
from creditwallet.v1 import common_pb2

NO_AGENT = "(no agent)"


@dataclasses.dataclass(frozen=True)
class AccountSeries:
    """Per UTC day of the window: the balance at the day's end and the spend by agent."""

    days: list[dt.date]
    # The balance (held credits included) after the day's last row; carried over quiet days.
    balance_micros: list[int]
    # agent -> micros spent each day, net of reversals (a reversal counts on its debit's day).
    spent_by_agent: dict[str, list[int]]
    # False when the page limit stopped the history read before the window's start.
    complete: bool
    covers_from: dt.datetime | None


def window(today: dt.date, days: int = limits.CONSOLE_CHART_DAYS) -> list[dt.date]:
    return [today - dt.timedelta(days=days - 1 - i) for i in range(days)]


async def account_series(
    client: AsyncCreditWalletClient, user_id: str, now: dt.datetime
) -> AccountSeries:
    days = window(now.astimezone(dt.UTC).date())
    start = dt.datetime.combine(days[0], dt.time(), tzinfo=dt.UTC)
    spent = await _spent_by_agent(client, user_id, days, start)
    rows: list[common_pb2.Transaction] = []
    token = ""
    complete = False
    for _ in range(limits.CONSOLE_CHART_PAGES_MAX):
        page = await client.list_transactions(
            user_id, page_size=limits.PAGE_SIZE_MAX, page_token=token
        )
        for row in page.transactions:
            if row.created_at.ToDatetime(dt.UTC) < start:
                complete = True
                break
            rows.append(row)
        token = page.next_page_token
        if complete or not token:
            complete = True
            break
    return summarize(days, rows, complete, spent)


async def _spent_by_agent(
    client: AsyncCreditWalletClient, user_id: str, days: list[dt.date], start: dt.datetime
) -> dict[str, list[int]]:
    index = {day.isoformat(): i for i, day in enumerate(days)}
    spent: dict[str, list[int]] = collections.defaultdict(lambda: [0] * len(days))
    token = ""
    for _ in range(limits.CONSOLE_CHART_PAGES_MAX):
        page = await client.get_usage(
            user_id,
            start_time=start,
            end_time=start + dt.timedelta(days=len(days)),
            group_by=["day", "agent"],
            page_size=limits.USAGE_PAGE_SIZE_MAX,
            page_token=token,
        )
        for group in page.groups:
            i = index.get(group.day)
            if i is not None and group.net_micros:
                spent[group.agent_id or NO_AGENT][i] += group.net_micros
        token = page.next_page_token
        if not token:
            break
    return dict(spent)


def summarize(
    days: list[dt.date],
    newest_first: list[common_pb2.Transaction],
    complete: bool,
    spent_by_agent: dict[str, list[int]],
) -> AccountSeries:
    index = {day: i for i, day in enumerate(days)}
    end_balance: dict[int, int] = {}
    for row in newest_first:
        i = index.get(row.created_at.ToDatetime(dt.UTC).date())
        if i is None:
            continue
        end_balance.setdefault(i, row.balance_after_micros)  # newest row of the day first
    # Days before the first row in the window start at the balance before that row.
    balance = 0
    if newest_first and complete:
        oldest = newest_first[-1]
        balance = oldest.balance_after_micros - oldest.amount_micros
    balances = []
    for i in range(len(days)):
        balance = end_balance.get(i, balance)
        balances.append(balance)
    covers_from = newest_first[-1].created_at.ToDatetime(dt.UTC) if newest_first else None
    return AccountSeries(days, balances, spent_by_agent, complete, covers_from)
