"""StreamEvents: replay from a cursor, then follow, by position, with bounded work.

A stream reads ``position > cursor`` in pages, and once it has caught up waits until the
sequencer's last position moves past what it has read. One watcher per process polls that
single number (``event_sequencer.last_position``) and wakes every waiting stream, so open
streams cost no queries while nothing happens. Positions are a committed prefix
(sequencer.py): a consumer that reconnects with the cursor of the last event it received
gets exactly the events after it, none twice and none skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator

import asyncpg
from creditwallet.core import limits
from creditwallet.server import db, errors
from creditwallet.server.db import Connection, Pool
from creditwallet.server.events import metrics, sequencer, store

_PAGE = f"""
SELECT {store.EVENT_COLUMNS} FROM events e
WHERE e.position > $1 AND e.position <= $2
  AND ($3::text IS NULL OR e.user_id = $3)
  AND (cardinality($4::text[]) = 0 OR e.type = ANY ($4::text[]))
ORDER BY e.position LIMIT $5
"""


class PositionWatcher:
    """The last assigned position, polled once per interval for every stream of the process."""

    def __init__(self, pool: Pool, poll_seconds: float) -> None:
        self._pool = pool
        self._poll = poll_seconds
        self.position = 0
        self._changed = asyncio.Condition()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(errors.LedgerError):
                await self.refresh()
            await asyncio.sleep(self._poll)

    async def refresh(self) -> None:
        position = await db.read(self._pool, sequencer.last_position)
        await self.advanced(position)

    async def advanced(self, position: int) -> None:
        if position > self.position:
            self.position = position
            metrics.STREAM_POSITION.set(position)
            async with self._changed:
                self._changed.notify_all()

    async def wait_beyond(self, position: int, timeout: float) -> None:
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self.position > position), timeout
                )


class Streams:
    """The bound on open streams, and the stream itself."""

    def __init__(self, pool: Pool, watcher: PositionWatcher, poll_seconds: float) -> None:
        self._pool = pool
        self._watcher = watcher
        self._poll = poll_seconds
        self._open = 0

    async def follow(
        self, after: int, user_id: str | None, types: list[str]
    ) -> AsyncIterator[asyncpg.Record]:
        if self._open >= limits.EVENT_STREAMS_MAX:
            raise errors.LedgerError(
                "TOO_MANY_STREAMS",
                f"at most {limits.EVENT_STREAMS_MAX} event streams at once; retry later",
            )
        self._open += 1
        metrics.STREAMS_OPEN.inc()
        try:
            read_up_to = after
            while True:
                high = self._watcher.position
                if high <= read_up_to:
                    # Wake on the watcher, or at least every few polls, in case it lags.
                    await self._watcher.wait_beyond(read_up_to, self._poll * 10)
                    if self._watcher.position <= read_up_to:
                        await self._watcher.refresh()
                    continue
                rows = await db.read(
                    self._pool,
                    functools.partial(
                        _page, low=read_up_to, high=high, user_id=user_id, types=types
                    ),
                )
                for row in rows:
                    yield row
                if len(rows) == limits.EVENT_STREAM_PAGE_MAX:
                    read_up_to = rows[-1]["position"]
                else:
                    read_up_to = high  # (read_up_to, high] has been read in full
        finally:
            self._open -= 1
            metrics.STREAMS_OPEN.dec()


async def _page(
    conn: Connection, *, low: int, high: int, user_id: str | None, types: list[str]
) -> list[asyncpg.Record]:
    return list(await conn.fetch(_PAGE, low, high, user_id, types, limits.EVENT_STREAM_PAGE_MAX))
