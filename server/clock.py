"""The one source of time for the ledger.

Every timestamp the ledger writes or compares comes from a ``Clock`` passed in, never from
PostgreSQL's ``now()`` or ``datetime.now()`` deep in the code, so tests can cross days,
months and TTLs without sleeping.
"""

from __future__ import annotations

import datetime as dt
from typing import Protocol


class Clock(Protocol):
    def now(self) -> dt.datetime: ...


class SystemClock:
    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)


class ManualClock:
    """A clock the tests set and advance; it never moves by itself."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        self._now = start or dt.datetime(2026, 1, 15, 12, 0, tzinfo=dt.UTC)

    def now(self) -> dt.datetime:
        return self._now

    def set(self, value: dt.datetime) -> None:
        assert value.tzinfo is not None, "the ledger's time is always aware (UTC)"
        self._now = value

    def advance(self, **delta: float) -> dt.datetime:
        self._now = self._now + dt.timedelta(**delta)
        return self._now
