"""Thin gRPC servicers: validate the request, call the ledger, convert its typed result.

``Runtime`` is what every servicer needs: the pool, the clock and the settings, and the
three ways of reaching the ledger: ``debit`` (the one debit route, ``ledger/batching.py``),
``execute`` (any other write under its request_id guard), ``write``/``read`` (naturally
idempotent writes and plain reads). The ledger returns dataclasses; protobuf stays here.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from creditwallet.server import db
from creditwallet.server.clock import Clock
from creditwallet.server.db import Connection, Pool
from creditwallet.server.ledger import idempotency
from creditwallet.server.ledger.batching import DebitBatcher
from creditwallet.server.ledger.debit import DebitCommand, DebitResult
from creditwallet.server.ledger.idempotency import Guard, Outcome
from google.protobuf.message import Message

if TYPE_CHECKING:
    from creditwallet.server.events.workers import EventWorkers

R = TypeVar("R")
T = TypeVar("T")


def guard(scope: str, request_id: str, method: str, request: Message) -> Guard:
    """The idempotency guard of a request: its key, and a digest of exactly what was sent."""
    digest = hashlib.sha256(
        method.encode() + b"\0" + request.SerializeToString(deterministic=True)
    ).digest()
    return Guard(scope, request_id, method, digest)


@dataclasses.dataclass(frozen=True)
class Runtime:
    pool: Pool
    clock: Clock
    debits: DebitBatcher
    trial_credits_micros: int = 5_000_000
    # The events' loops and streams (server/events/); None when not started.
    events: EventWorkers | None = None

    async def debit(self, cmd: DebitCommand, request: Message) -> Outcome[DebitResult]:
        return await self.debits.submit(guard(cmd.user_id, cmd.request_id, "Debit", request), cmd)

    async def execute(
        self,
        guard: Guard,
        result_type: type[R],
        work: Callable[[Connection, Clock], Awaitable[R]],
        *,
        refuses_before_writing: bool = False,
    ) -> Outcome[R]:
        return await idempotency.execute(
            self.pool,
            self.clock,
            guard,
            result_type,
            work,
            refuses_before_writing=refuses_before_writing,
        )

    async def write(self, work: Callable[[Connection, Clock], Awaitable[T]]) -> T:
        """A naturally idempotent write (EnsureAccount, SetAgentPrice, ...)."""
        return await db.run_transaction(self.pool, lambda conn: work(conn, self.clock))

    async def read(self, work: Callable[[Connection, Clock], Awaitable[T]]) -> T:
        return await db.read(self.pool, lambda conn: work(conn, self.clock))
