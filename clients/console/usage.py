"""Where an account's 30-day charts get their figures: one function, so its source is one place.

The figures are read from the account's history (``ListTransactions``, newest first, pages of
``PAGE_SIZE_MAX``) back to the start of the window, at most ``CONSOLE_CHART_PAGES_MAX`` pages:
an account with more rows than that in 30 days gets charts of its most recent rows only, and
the result says from when (``complete`` false, ``covers_from``), which the page shows.
Days are UTC days.
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
    # agent -> micros charged by debits each day (reversals not deducted).
    spent_by_agent: dict[str, list[int]]
    # False when the page limit stopped the read before the window's start.
    complete: bool
    covers_from: dt.datetime | None


def window(today: dt.date, days: int = limits.CONSOLE_CHART_DAYS) -> list[dt.date]:
    return [today - dt.timedelta(days=days - 1 - i) for i in range(days)]


async def account_series(
    client: AsyncCreditWalletClient, user_id: str, now: dt.datetime
) -> AccountSeries:
    days = window(now.astimezone(dt.UTC).date())
    start = dt.datetime.combine(days[0], dt.time(), tzinfo=dt.UTC)
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
    return summarize(days, rows, complete)


def summarize(
    days: list[dt.date], newest_first: list[common_pb2.Transaction], complete: bool
) -> AccountSeries:
    index = {day: i for i, day in enumerate(days)}
    end_balance: dict[int, int] = {}
    spent: dict[str, list[int]] = collections.defaultdict(lambda: [0] * len(days))
    for row in newest_first:
        i = index.get(row.created_at.ToDatetime(dt.UTC).date())
        if i is None:
            continue
        end_balance.setdefault(i, row.balance_after_micros)  # newest row of the day first
        if row.type == common_pb2.TRANSACTION_TYPE_DEBIT:
            spent[row.agent_id or NO_AGENT][i] += -row.amount_micros
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
    return AccountSeries(days, balances, dict(spent), complete, covers_from)
