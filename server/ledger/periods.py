"""Billing periods as the provider counts them, and the rollover's month names.

A subscription's schedule is its billing cycle anchor A, an interval (day, week, month or
year) and an interval count k. Boundary n is A moved by n*k intervals, always computed from
A (never from the previous boundary): a month or year step keeps A's day of the month,
clamped to the target month's length, and A's time of day, on the UTC calendar. So an anchor
on Jan 31 gives Jan 31, Feb 28, Mar 31, Apr 30 (chaining "previous end + 1 month" would drift
to Mar 28). A period ends on a boundary; the period after it ends on the next one.

A period's own start need not be a boundary: a prorated first period starts when the
customer subscribed and ends on the anchor (boundary 0), so the anchor cannot be read from
the period's start. When the anchor is unknown or does not fit (it changed since), the
schedule the period itself implies is used (``infer``) and marked as inferred.
"""

from __future__ import annotations

import calendar
import dataclasses
import datetime as dt
import re
from typing import Final

from creditwallet.server import errors

INTERVALS: Final = ("day", "week", "month", "year")
_MONTHS_PER: Final = {"month": 1, "year": 12}
_DAYS_PER: Final = {"day": 1, "week": 7}

_MONTH = re.compile(r"(\d{4})-(\d{2})")


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Boundaries at ``anchor`` + n * ``count`` ``interval`` s, n = 0, 1, 2, ..."""

    anchor: dt.datetime
    interval: str
    count: int

    def __post_init__(self) -> None:
        if self.interval not in INTERVALS or self.count < 1:
            raise ValueError(f"not a billing schedule: {self.interval} x {self.count}")
        if self.anchor.tzinfo is None:
            raise ValueError("a schedule's anchor is an aware time")

    def boundary(self, n: int) -> dt.datetime:
        anchor = self.anchor.astimezone(dt.UTC)
        if self.interval in _DAYS_PER:
            return anchor + dt.timedelta(days=n * self.count * _DAYS_PER[self.interval])
        return add_months(anchor, n * self.count * _MONTHS_PER[self.interval], anchor.day)

    def index_of(self, moment: dt.datetime) -> int | None:
        """n with boundary(n) == moment, or None when moment is not a boundary."""
        anchor, moment = self.anchor.astimezone(dt.UTC), moment.astimezone(dt.UTC)
        if moment < anchor:
            return None
        if self.interval in _DAYS_PER:
            step = dt.timedelta(days=self.count * _DAYS_PER[self.interval])
            steps, rest = divmod(moment - anchor, step)
            return steps if rest == dt.timedelta(0) else None
        step_months = self.count * _MONTHS_PER[self.interval]
        months = (moment.year - anchor.year) * 12 + moment.month - anchor.month
        # Clamping never leaves the target month: boundary n is in month anchor + n * step.
        count, left = divmod(months, step_months)
        return count if left == 0 and self.boundary(count) == moment else None

    def following(self, end: dt.datetime) -> dt.datetime | None:
        """The end of the period after the one ending at ``end``; None if end is off-schedule."""
        n = self.index_of(end)
        return None if n is None else self.boundary(n + 1)


def infer(start: dt.datetime, end: dt.datetime, interval: str, count: int) -> Schedule:
    """The schedule a period [start, end) implies on its own.

    A full period starts on a boundary, so its start is an anchor whose next boundary is its
    end. Otherwise the period is a partial one (prorated, or cut short) ending on a boundary,
    and its end is taken as the anchor: only its end is known to be on the schedule.
    """
    from_start = Schedule(start, interval, count)
    if from_start.boundary(1) == end:
        return from_start
    return Schedule(end, interval, count)


def add_months(value: dt.datetime, months: int, day: int) -> dt.datetime:
    """value moved by whole months, on ``day`` clamped to the target month's length."""
    index = value.year * 12 + value.month - 1 + months
    year, month = divmod(index, 12)
    last = calendar.monthrange(year, month + 1)[1]
    return value.replace(year=year, month=month + 1, day=min(day, last))


def parse_month(value: str, now: dt.datetime) -> str:
    """A rollover's label: YYYY-MM, empty for the current UTC month, never in the future."""
    current = now.astimezone(dt.UTC).strftime("%Y-%m")
    if not value:
        return current
    match = _MONTH.fullmatch(value)
    if match is None or not 1 <= int(match.group(2)) <= 12 or int(match.group(1)) < 2000:
        raise errors.invalid("period", "period must be YYYY-MM")
    if value > current:
        raise errors.invalid("period", f"period {value} is in the future")
    return value
