"""Health that reflects the database: a probe that flips gRPC health to NOT_SERVING and back.

Why a probe of its own: a load balancer or an orchestrator asks ``grpc.health.v1.Health``
whether to send traffic here. A server whose database is gone can only answer UNAVAILABLE,
so it should say so before callers find out one failed RPC at a time. The probe pings with
``SELECT 1`` on a dedicated connection (not the pool, so a busy pool never reads as a dead
database, and the probe never takes a connection from the ledger's traffic), with a timeout,
every ``HEALTH_PROBE_INTERVAL_SECONDS``, and reconnects after a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

import asyncpg
from creditwallet.core import limits
from creditwallet.server import db, metrics
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# Anything the ping can raise while the database is away or refusing us.
_PROBE_ERRORS: tuple[type[BaseException], ...] = (*db.UNAVAILABLE_ERRORS, asyncpg.PostgresError)


class DatabaseHealth:
    """Pings the database and mirrors the answer into the health servicer, on change only."""

    def __init__(
        self,
        dsn: str,
        servicer: health_aio.HealthServicer,
        services: Iterable[str],
        *,
        interval_seconds: float = limits.HEALTH_PROBE_INTERVAL_SECONDS,
    ) -> None:
        self._dsn = dsn
        self._servicer = servicer
        self._services = ("", *services)
        self._interval_seconds = interval_seconds
        self._conn: db.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one ping at a time, so one connection at a time
        self.serving: bool | None = None

    async def set(self, serving: bool) -> None:
        if serving == self.serving:
            return
        if self.serving is not None:
            log.warning("database %s", "reachable again" if serving else "unreachable")
        self.serving = serving
        metrics.DATABASE_UP.set(1 if serving else 0)
        for name in self._services:
            await self._servicer.set(name, SERVING if serving else NOT_SERVING)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="database-health-probe")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._close()

    async def probe(self) -> bool:
        """One ping: True when ``SELECT 1`` answered within the timeout."""
        async with self._lock:
            return await self._ping()

    async def _ping(self) -> bool:
        try:
            async with asyncio.timeout(limits.HEALTH_PROBE_TIMEOUT_SECONDS):
                if self._conn is None or self._conn.is_closed():
                    self._conn = await asyncpg.connect(
                        self._dsn, timeout=limits.HEALTH_PROBE_TIMEOUT_SECONDS
                    )
                await self._conn.fetchval("SELECT 1")
            return True
        except _PROBE_ERRORS:
            await self._close()
            return False

    async def _run(self) -> None:
        while True:
            await self.set(await self.probe())
            await asyncio.sleep(self._interval_seconds)

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            # A broken connection may not close politely; terminate() never waits.
            conn.terminate()
