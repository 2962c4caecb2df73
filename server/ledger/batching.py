"""Group commit for debits: concurrent debits share one transaction, each still on its own.

Why: a debit's own work is one fused statement; its idempotency claim, its account lock,
its stored response, BEGIN and COMMIT (a WAL flush) cost as much again. Debits that arrive
while earlier batches are committing are applied together in one transaction: one statement
claims all their request_ids, one locks all their accounts, each debit runs its fused
statement, and one statement stores all the responses. Each debit is still on its own:

- all or nothing per debit: a refusal (insufficient credits, in debt, ...) is decided before
  that debit writes anything, is recorded under its request_id and leaves its batch-mates
  alone; the next debit of the same account sees the balance the previous one left;
- anything else that goes wrong (a malformed request found late, a bug, a conflict the
  database refuses) aborts the whole batch before anything commits, and every debit of it
  is then run alone, so one bad debit never fails its batch-mates;
- claims and account locks are taken in (account, request_id) order, so batches do not
  deadlock each other; a request_id sent twice in one batch is applied once and the second
  copy gets the first one's outcome, as a replay.

There is no timer: debits that arrive while the batches in flight are busy form the next
batch, so a lone debit never waits. A caller that goes away does not cancel its batch: the
batch runs in its own task and each outcome is still recorded under its request_id.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from creditwallet.core import limits
from creditwallet.server import db, errors, metrics
from creditwallet.server.clock import Clock
from creditwallet.server.db import Connection, Pool
from creditwallet.server.ledger import accounts, debit, idempotency
from creditwallet.server.ledger.idempotency import Guard
from creditwallet.server.ledger.types import Account
from google.protobuf.message import Message

log = logging.getLogger(__name__)

Outcome = Message | errors.LedgerError
Respond = Callable[[debit.DebitResult], Message]


@dataclasses.dataclass
class _Item:
    guard: Guard[Any]
    cmd: debit.DebitCommand
    respond: Respond
    future: asyncio.Future[Outcome]

    @property
    def key(self) -> tuple[str, str]:
        return (self.guard.scope, self.guard.request_id)


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

    async def submit(self, guard: Guard[Any], cmd: debit.DebitCommand, respond: Respond) -> Message:
        item = _Item(guard, cmd, respond, asyncio.get_running_loop().create_future())
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
        batch.sort(key=lambda i: i.key)
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
        claimed = await idempotency.claim_many(conn, [i.guard for i in batch], now)
        locked = await accounts.lock_many(conn, [i.cmd.user_id for i in batch if i.key in claimed])
        outcomes: list[Outcome] = []
        first: dict[tuple[str, str], int] = {}
        done: list[tuple[Guard[Any], Message]] = []
        for index, item in enumerate(batch):
            if item.key not in claimed:  # recorded by an earlier transaction
                outcomes.append(await _replayed(conn, item.guard))
                continue
            if item.key in first:  # the same request_id, claimed earlier in this batch
                outcomes.append(_as_replay(batch[first[item.key]], item, outcomes[first[item.key]]))
                continue
            first[item.key] = index
            try:
                response = await self._debit(conn, item, locked, now)
            except errors.LedgerError as exc:
                if not exc.stored:
                    raise  # its claim is written: only a rollback of the batch undoes it
                await idempotency.store_error(conn, item.guard, exc)
                outcomes.append(exc)
                continue
            done.append((item.guard, response))
            outcomes.append(response)
        await idempotency.store_responses(conn, done)
        return outcomes

    async def _debit(
        self,
        conn: Connection,
        item: _Item,
        locked: dict[str, Account],
        now: dt.datetime,
    ) -> Message:
        account = locked.get(item.cmd.user_id)
        if account is None:
            raise accounts.account_not_found(item.cmd.user_id)
        account = await accounts.touch(conn, account, now)
        locked[item.cmd.user_id] = account  # a refusal below still keeps the touch
        result = await debit.debit_locked(conn, item.cmd, account, now)
        locked[item.cmd.user_id] = result.account
        return item.respond(result)

    async def _alone(self, item: _Item) -> None:
        async def work(conn: Connection, now: dt.datetime) -> Message:
            return item.respond(await debit.debit(conn, item.cmd, now))

        async def transaction(conn: Connection) -> Outcome:
            return await item.guard.attempt(conn, self._clock.now(), work, True)

        try:
            _settle(item, await db.run_transaction(self._pool, transaction))
        except Exception as exc:
            _settle(item, exc)


async def _replayed(conn: Connection, guard: Guard[Any]) -> Outcome:
    try:
        response: Message = await idempotency.replay(conn, guard)
    except errors.LedgerError as exc:
        if not exc.stored:
            raise
        return exc  # a stored refusal, or a reused request_id: nothing was written
    return response


def _as_replay(original: _Item, copy: _Item, outcome: Outcome) -> Outcome:
    """What a replay of ``original`` would answer to ``copy`` (same key, same batch)."""
    if copy.guard.method != original.guard.method or copy.guard.digest != original.guard.digest:
        return errors.request_id_reused(copy.guard.request_id)
    if isinstance(outcome, errors.LedgerError):
        return outcome
    return idempotency.as_replayed(outcome)


def _settle(item: _Item, outcome: Outcome | BaseException) -> None:
    if item.future.done():
        return
    if isinstance(outcome, errors.LedgerError | Message):
        item.future.set_result(outcome)
    else:
        item.future.set_exception(outcome)
