"""The events' background loops, inside the server process, on a pool of their own.

Every replica runs all of them; each is safe to run on several at once (sequencer: one
pass at a time by row lock; deliveries: one sender per lane by advisory lock; expiry
notices: a primary key; payments: ``SKIP LOCKED``). Each loop polls at most every
``poll_seconds`` while idle and goes on at once while it finds work. A loop that meets an
error logs it and tries again on its next tick: the database being away never stops them.
Work in flight at shutdown is rolled back and done again later (at least once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import aiohttp
from creditwallet.core import limits
from creditwallet.server import db
from creditwallet.server.clock import Clock, SystemClock
from creditwallet.server.db import Connection, Pool
from creditwallet.server.events import expiring, metrics, recharge, sequencer, webhooks
from creditwallet.server.events.settings import EventsConfig
from creditwallet.server.events.stream import PositionWatcher, Streams

log = logging.getLogger(__name__)

# The expiry scan reads more than the other loops: at most this often (in poll intervals).
_EXPIRING_EVERY_POLLS = 5

_SETTINGS = "UPDATE event_settings SET balance_low_default_micros = $1"


class EventWorkers:
    def __init__(self, config: EventsConfig, rpc_pool: Pool, pool: Pool, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self._pool = pool
        self._http: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.watcher = PositionWatcher(rpc_pool, config.poll_seconds)
        self.streams = Streams(rpc_pool, self.watcher, config.poll_seconds)
        self.payments = (
            recharge.StripePayments(config.stripe_secret_key, config.stripe_api_base)
            if config.stripe_secret_key is not None
            else None
        )

    @classmethod
    async def create(
        cls, config: EventsConfig, rpc_pool: Pool, dsn: str, clock: Clock, statement_cache: int
    ) -> EventWorkers:
        pool = await db.create_pool(
            dsn,
            min_size=1,
            max_size=limits.EVENTS_POOL_SIZE_MAX,
            statement_cache_size=statement_cache,
        )
        workers = cls(config, rpc_pool, pool, clock)
        await workers._configure()
        return workers

    async def _configure(self) -> None:
        async def write(conn: Connection) -> None:
            await conn.execute(_SETTINGS, self.config.balance_low_default_micros)
            await webhooks.sync_endpoints(conn, self.config.endpoints, self.clock.now())

        await db.run_transaction(self._pool, write)

    def start(self) -> None:
        self._tasks.append(asyncio.ensure_future(self.watcher.run()))
        if not self.config.workers:
            return
        self._http = aiohttp.ClientSession()
        deliverer = webhooks.Deliverer(self.config.endpoints, self.clock, self._http, SystemClock())
        self._loop("sequencer", self._sequence)
        for index in range(limits.WEBHOOK_DELIVERIES_IN_FLIGHT_MAX if self.config.endpoints else 0):
            self._loop(f"webhooks-{index}", self._transaction(deliverer.deliver_one))
        self._loop("expiring", self._expiring(), idle_polls=_EXPIRING_EVERY_POLLS)
        if self.payments is not None:
            self._loop("auto-recharge", self._transaction(self._pay))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._http is not None:
            await self._http.close()
        if self.payments is not None:
            await self.payments.close()
        await self._pool.close()

    def _loop(self, name: str, work: Callable[[], Awaitable[bool]], *, idle_polls: int = 1) -> None:
        async def run() -> None:
            while True:
                try:
                    busy = await work()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("events loop %s failed: %s: %.200s", name, type(exc).__name__, exc)
                    busy = False
                if not busy:
                    await asyncio.sleep(self.config.poll_seconds * idle_polls)

        self._tasks.append(asyncio.ensure_future(run()))

    def _transaction(
        self, work: Callable[[Connection], Awaitable[bool]]
    ) -> Callable[[], Awaitable[bool]]:
        async def run() -> bool:
            async with (
                self._pool.acquire(timeout=limits.DB_ACQUIRE_TIMEOUT_SECONDS) as conn,
                conn.transaction(),
            ):
                return await work(db.unwrap(conn))

        return run

    async def _sequence(self) -> bool:
        async with (
            self._pool.acquire(timeout=limits.DB_ACQUIRE_TIMEOUT_SECONDS) as conn,
            conn.transaction(),
        ):
            done = await sequencer.sequence(db.unwrap(conn), self.clock.now())
        if done is None:
            return False
        placed, by_type = done
        for type_, count in by_type.items():
            metrics.EVENTS_WRITTEN.labels(type_).inc(count)
        if placed:
            await self.watcher.refresh()
        return placed >= limits.EVENTS_SEQUENCE_BATCH_MAX

    def _expiring(self) -> Callable[[], Awaitable[bool]]:
        async def run(conn: Connection) -> bool:
            noticed = await expiring.notice_due(
                conn, self.clock.now(), self.config.expiring_lead_days
            )
            return noticed >= limits.CREDITS_EXPIRING_SCAN_BATCH_MAX

        return self._transaction(run)

    async def _pay(self, conn: Connection) -> bool:
        assert self.payments is not None
        return await recharge.pay_one(
            conn, self.payments, self.clock.now(), self.config.auto_recharge_failures_max
        )
