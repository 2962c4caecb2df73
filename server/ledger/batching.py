"""The one route of every debit: group commit, in which a lone debit is a batch of one.

Why group commit: a debit's own work is one fused statement; its idempotency claim, its
account lock, its stored result, BEGIN and COMMIT (a WAL flush) cost as much again. Debits
that arrive while earlier batches are committing are applied together in one transaction:

1. one statement claims all their request_ids (``idempotency.claim``);
2. one statement locks all their accounts, then the clock is read: each account's write
   time is taken after its lock (``accounts.lock_many``), and its due expiries recorded;
3. one call applies all the debits (``debit.debit_many``), in (account, request_id) order,
   each seeing the balance the previous one left (a second call only after an account's
   first debit of the day, for its streak);
4. one statement stores all the refusals and one all the results (``idempotency.store``).

Each debit is still on its own:

- all or nothing per debit: a refusal (insufficient credits, in debt, ...) is decided before
  that debit writes anything, is recorded under its request_id and leaves its batch-mates
  alone;
- anything else that goes wrong (a malformed request found late, a bug, a conflict the
  database refuses) aborts the whole batch before anything commits, and each debit of it is
  then run as a batch of its own (each account's in the batch's order), so one bad debit
  never fails its batch-mates;
- claims and account locks are taken in (account, request_id) order, so batches do not
  deadlock each other; a request_id sent twice in one batch is applied once and the second
  copy gets the first one's outcome, as a replay.

There is no timer: debits that arrive while the batches in flight are busy form the next
batch, so a lone debit never waits. With group commit off, every batch holds one debit. A
caller that goes away does not cancel its batch: the batch runs in its own task and each
outcome is still recorded under its request_id.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from creditwallet.core import limits
from creditwallet.server import db, errors, metrics
from creditwallet.server.clock import Clock
from creditwallet.server.db import Connection, Pool
from creditwallet.server.ledger import accounts, debit, idempotency
from creditwallet.server.ledger.debit import DebitCommand, DebitResult
from creditwallet.server.ledger.idempotency import Guard, Outcome

log = logging.getLogger(__name__)

Answer = Outcome[DebitResult] | errors.LedgerError


@dataclasses.dataclass
class _Item:
    guard: Guard
    cmd: DebitCommand
    future: asyncio.Future[Answer]


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

    @classmethod
    def one_by_one(cls, pool: Pool, clock: Clock) -> DebitBatcher:
        """Group commit off: every debit is a batch of one, as many at once as the pool holds."""
        return cls(pool, clock, batch_max=1, in_flight_max=limits.DB_POOL_SIZE_MAX)

    @property
    def batch_max(self) -> int:
        return self._batch_max

    @property
    def queued(self) -> int:
        """Debits waiting for a batch slot (tests use it to set up a race)."""
        return len(self._queue)

    async def submit(self, guard: Guard, cmd: DebitCommand) -> Outcome[DebitResult]:
        item = _Item(guard, cmd, asyncio.get_running_loop().create_future())
        self._queue.append(item)
        self._start_batches()
        answer = await asyncio.shield(item.future)
        if isinstance(answer, errors.LedgerError):
            raise answer
        return answer

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
        batch.sort(key=lambda i: i.guard.key)
        try:
            answers = await db.run_transaction(self._pool, lambda conn: self._apply(conn, batch))
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0], exc)
                return
            log.warning("debit batch aborted; running its debits alone", extra={"size": len(batch)})
            metrics.DEBIT_BATCHES_ABORTED.inc()
            # As many at once as batches may be in flight (the pool is sized for that), but
            # each account's debits one after another, in the batch's order.
            slots = asyncio.Semaphore(self._in_flight_max)
            by_account: dict[str, list[_Item]] = {}
            for item in batch:
                by_account.setdefault(item.cmd.user_id, []).append(item)

            async def alone(items: list[_Item]) -> None:
                for item in items:
                    async with slots:
                        await self._run([item])

            await asyncio.gather(*(alone(items) for items in by_account.values()))
            return
        metrics.DEBIT_BATCH_SIZE.observe(len(batch))
        for item, answer in zip(batch, answers, strict=True):
            _settle(item, answer)

    async def _apply(self, conn: Connection, batch: list[_Item]) -> list[Answer]:
        claimed = await idempotency.claim(conn, [i.guard for i in batch], self._clock.now())
        locked = await accounts.lock_many(
            conn, [i.cmd.user_id for i in batch if i.guard.key in claimed], self._clock
        )
        answers: list[Answer | None] = [None] * len(batch)
        first: dict[tuple[str, str], int] = {}
        copies: list[int] = []
        to_apply: list[int] = []
        for index, item in enumerate(batch):
            if item.guard.key not in claimed:  # recorded by an earlier transaction
                answers[index] = await idempotency.replay(conn, item.guard, DebitResult)
            elif item.guard.key in first:  # the same request_id, claimed earlier in this batch
                copies.append(index)
            elif item.cmd.user_id not in locked:
                first[item.guard.key] = index
                answers[index] = _stored(accounts.account_not_found(item.cmd.user_id))
            else:
                first[item.guard.key] = index
                to_apply.append(index)
        outcomes = await debit.debit_many(conn, [batch[i].cmd for i in to_apply], locked)
        done: list[tuple[Guard, DebitResult]] = []
        for index, outcome in zip(to_apply, outcomes, strict=True):
            if isinstance(outcome, DebitResult):
                done.append((batch[index].guard, outcome))
                answers[index] = Outcome(outcome, replayed=False)
            else:
                answers[index] = outcome
        refused = [
            (batch[i].guard, answer)
            for i in first.values()
            if isinstance(answer := answers[i], errors.LedgerError)
        ]
        await idempotency.store_refusals(conn, refused)
        await idempotency.store(conn, done)
        for index in copies:
            earlier = first[batch[index].guard.key]
            original = answers[earlier]
            assert original is not None
            answers[index] = _as_replay(batch[earlier], batch[index], original)
        settled = [a for a in answers if a is not None]
        assert len(settled) == len(batch)
        return settled


def _stored(exc: errors.LedgerError) -> errors.LedgerError:
    """A refusal decided in the batch: stored under its request_id, or (a malformed request)
    raised, since only a rollback of the batch undoes its claim."""
    if not exc.stored:
        raise exc
    return exc


def _as_replay(original: _Item, copy: _Item, answer: Answer) -> Answer:
    """What a replay of ``original`` would answer to ``copy`` (same key, same batch)."""
    if copy.guard.method != original.guard.method or copy.guard.digest != original.guard.digest:
        return errors.request_id_reused(copy.guard.request_id)
    if isinstance(answer, errors.LedgerError):
        return answer
    return Outcome(answer.result, replayed=True)


def _settle(item: _Item, answer: Answer | BaseException) -> None:
    if item.future.done():
        return
    if isinstance(answer, errors.LedgerError | Outcome):
        item.future.set_result(answer)
    else:
        item.future.set_exception(answer)
