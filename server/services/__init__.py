"""Thin gRPC servicers: validate the request, call one ledger function, convert the result.

``Runtime`` is what every servicer needs: the pool, the clock and the settings, plus
``execute``, which runs a mutating ledger function under its request_id guard.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from creditwallet.server import db
from creditwallet.server.clock import Clock
from creditwallet.server.db import Connection, Pool
from creditwallet.server.ledger import debit, idempotency
from creditwallet.server.ledger.batching import DebitBatcher
from google.protobuf.message import Message

if TYPE_CHECKING:
    from creditwallet.server.events.workers import EventWorkers

R = TypeVar("R", bound=Message)
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Runtime:
    pool: Pool
    clock: Clock
    trial_credits_micros: int = 5_000_000
    # Group commit of debits (ledger/batching.py); None runs each debit in its own transaction.
    debit_batcher: DebitBatcher | None = None
    # The events' loops and streams (server/events/); None when not started.
    events: EventWorkers | None = None

    async def execute(
        self,
        *,
        scope: str,
        request_id: str,
        method: str,
        request: Message,
        response_type: type[R],
        work: Callable[[Connection, dt.datetime], Awaitable[R]],
        refuses_before_writing: bool = False,
    ) -> R:
        return await idempotency.execute(
            self.pool,
            self.clock,
            scope=scope,
            request_id=request_id,
            method=method,
            request=request,
            response_type=response_type,
            work=work,
            refuses_before_writing=refuses_before_writing,
        )

    async def execute_debit(
        self,
        cmd: debit.DebitCommand,
        request: Message,
        response_type: type[R],
        respond: Callable[[debit.DebitResult], R],
    ) -> R:
        """A debit under its request_id: group-committed when enabled, else on its own."""
        if self.debit_batcher is None:

            async def work(conn: Connection, now: dt.datetime) -> R:
                return respond(await debit.debit(conn, cmd, now))

            return await self.execute(
                scope=cmd.user_id,
                request_id=cmd.request_id,
                method="Debit",
                request=request,
                response_type=response_type,
                work=work,
                refuses_before_writing=True,
            )
        guard = idempotency.Guard(
            cmd.user_id,
            cmd.request_id,
            "Debit",
            idempotency.request_hash("Debit", request),
            response_type,
        )
        response = await self.debit_batcher.submit(guard, cmd, respond)
        assert isinstance(response, response_type)
        return response

    async def write(self, work: Callable[[Connection, dt.datetime], Awaitable[T]]) -> T:
        """A naturally idempotent write (EnsureAccount, SetAgentPrice, ...)."""
        return await db.run_transaction(self.pool, lambda conn: work(conn, self.clock.now()))

    async def read(
        self, work: Callable[[Connection, dt.datetime], Awaitable[T]], *, snapshot: bool = False
    ) -> T:
        return await db.read(
            self.pool, lambda conn: work(conn, self.clock.now()), snapshot=snapshot
        )
