"""Group commit for debits: concurrent debits share one transaction, each still on its own.

Why: a debit's own work is a few short statements; the commit (a WAL flush) and the
transaction's round trips cost as much again. Debits that arrive while earlier batches are
committing are applied together, in one transaction, one after another, each with its own
idempotency guard, account lock and refusal, exactly as if alone:

- all or nothing per debit: a refusal (insufficient credits, in debt, ...) is decided before
  that debit writes anything, is recorded under its request_id and leaves its batch-mates
  alone;
- anything else that goes wrong (a malformed request found late, a bug, a conflict the
  database refuses) aborts the whole batch before anything commits, and every debit of it
  is then run alone, so one bad debit never fails its batch-mates;
- accounts and claims are taken in (account, request_id) order, so batches cannot deadlock
  each other; a debit repeated inside one batch finds its own earlier claim and replays it.

A caller that goes away does not cancel its batch: the batch runs in its own task and its
outcome is still recorded under each request_id.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from google.protobuf.message import Message

from server import db, errors, limits, metrics
from server.clock import Clock
from server.db import Connection, Pool
from server.ledger.idempotency import Guard

log = logging.getLogger(__name__)

Work = Callable[[Connection, dt.datetime], Awaitable[Any]]
Outcome = Message | errors.LedgerError


@dataclasses.dataclass
class _Item:
    guard: Guard[Any]
    work: Work
    future: asyncio.Future[Outcome]


class DebitBatcher:
    def __init__(
        self,
        pool: Pool,
        clock: Clock,
        *,
        batch_max: int = limits.DEBIT_BATCH_MAX,
        in_flight_max: int = limits.DEBIT_BATCHES_IN_FLIGHT_MAX,
    ) -> None:
        self._pool = pool
        self._clock = clock
        self._batch_max = batch_max
        self._in_flight_max = in_flight_max
        self._queue: list[_Item] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, guard: Guard[Any], work: Work) -> Message:
        item = _Item(guard, work, asyncio.get_running_loop().create_future())
        self._queue.append(item)
        self._start_batches()
        outcome = await asyncio.shield(item.future)
        if isinstance(outcome, errors.LedgerError):
            raise outcome
        return outcome

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _start_batches(self) -> None:
        while self._queue and len(self._tasks) < self._in_flight_max:
            batch = self._queue[: self._batch_max]
            del self._queue[: self._batch_max]
            task = asyncio.ensure_future(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._start_batches()

    async def _run(self, batch: list[_Item]) -> None:
        batch.sort(key=lambda i: (i.guard.scope, i.guard.request_id))
        try:
            outcomes = await db.run_transaction(self._pool, lambda conn: self._apply(conn, batch))
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0], exc)
                return
            log.warning("debit batch aborted; running its debits alone", extra={"size": len(batch)})
            metrics.DEBIT_BATCHES_ABORTED.inc()
            await asyncio.gather(*(self._alone(item) for item in batch))
            return
        metrics.DEBIT_BATCH_SIZE.observe(len(batch))
        for item, outcome in zip(batch, outcomes, strict=True):
            _settle(item, outcome)

    async def _apply(self, conn: Connection, batch: list[_Item]) -> list[Outcome]:
        now = self._clock.now()
        outcomes: list[Outcome] = []
        for item in batch:
            try:
                outcomes.append(await item.guard.attempt(conn, now, item.work, True))
            except errors.LedgerError as exc:
                if not exc.stored:
                    raise  # its claim is written: only a rollback of the batch undoes it
                outcomes.append(exc)  # a replayed refusal or a reused request_id: no writes
        return outcomes

    async def _alone(self, item: _Item) -> None:
        async def transaction(conn: Connection) -> Outcome:
            return await item.guard.attempt(conn, self._clock.now(), item.work, True)

        try:
            _settle(item, await db.run_transaction(self._pool, transaction))
        except Exception as exc:
            _settle(item, exc)


def _settle(item: _Item, outcome: Outcome | BaseException) -> None:
    if item.future.done():
        return
    if isinstance(outcome, errors.LedgerError | Message):
        item.future.set_result(outcome)
    else:
        item.future.set_exception(outcome)
