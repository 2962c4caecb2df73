"""Billing-period arithmetic: months as Stripe counts them, and rollover month names.

Stripe anchors a monthly subscription on a day of the month and clamps it to the month's
length (anchor 31: Jan 31 -> Feb 28 -> Mar 31 -> Apr 30). A period's own start or end may be
clamped, but not both, so the anchor day is the larger of their days.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re

from creditwallet.server import errors

_MONTH = re.compile(r"(\d{4})-(\d{2})")
# A period longer than this is not monthly; its successor is assumed to be as long.
_MONTHLY_DAYS_MAX = 31


def add_months(value: dt.datetime, months: int, day: int) -> dt.datetime:
    """value moved by whole months, on ``day`` clamped to the target month's length."""
    index = value.year * 12 + value.month - 1 + months
    year, month = divmod(index, 12)
    last = calendar.monthrange(year, month + 1)[1]
    return value.replace(year=year, month=month + 1, day=min(day, last))


def next_period_end(start: dt.datetime, end: dt.datetime) -> dt.datetime:
    """The end of the billing period that follows [start, end) (a subscription
    lot's expiry)."""
    if (end - start).days > _MONTHLY_DAYS_MAX:
        return end + (end - start)
    return add_months(end, 1, max(start.day, end.day))


def parse_month(value: str, now: dt.datetime) -> str:
    """A rollover period: YYYY-MM, empty for the current UTC month, never in the future."""
    current = now.astimezone(dt.UTC).strftime("%Y-%m")
    if not value:
        return current
    match = _MONTH.fullmatch(value)
    if match is None or not 1 <= int(match.group(2)) <= 12 or int(match.group(1)) < 2000:
        raise errors.invalid("period", "period must be YYYY-MM")
    if value > current:
        raise errors.invalid("period", f"period {value} is in the future")
    return value
