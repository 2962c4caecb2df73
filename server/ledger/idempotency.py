"""Idempotency records: claim a request_id, replay its stored outcome, or refuse reuse.

The guard lives in the same transaction as the write it protects (as Stripe's idempotency
keys and TigerBeetle's transfer ids):

1. ``claim`` inserts the record first. A concurrent caller with the same key blocks on the
   unique index until the first commits, then finds the record: one application, however
   many callers. One statement claims one key or a whole batch's.
2. The work runs. A state-dependent refusal (``LedgerError.stored``) is written into the
   record and committed, so a retry never turns into a different outcome; a malformed request
   rolls the claim back, so the caller may fix it and retry the same key.
3. ``store`` writes the ledger's typed result (JSON), which a replay decodes and returns as
   an ``Outcome`` with ``replayed`` set. The RPC layer builds the reply from the result, the
   same way for a first answer and for a replay.

The record's key is (scope, request_id): the scope is the account, so keys need only be
unique per user; provider events, which may concern no account yet, use ``BILLING_SCOPE``.
The request's digest is computed by the RPC layer from what the caller sent.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

import msgspec
from creditwallet.core import limits
from creditwallet.server import db, errors
from creditwallet.server.clock import Clock
from creditwallet.server.db import Connection, Pool

R = TypeVar("R")

# Idempotency scope for requests that belong to no account yet (provider events).
BILLING_SCOPE = "~billing"

# Rows go in (scope, request_id) order, the order in which every batch takes its claims, so
# two batches never wait on each other's claims in a cycle.
_CLAIM = """
INSERT INTO idempotency_records (user_id, request_id, method, request_hash, created_at)
SELECT c.user_id, c.request_id, c.method, c.request_hash, $5
FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[])
     AS c(user_id, request_id, method, request_hash)
ORDER BY c.user_id, c.request_id
ON CONFLICT (user_id, request_id) DO NOTHING
RETURNING user_id, request_id
"""

_FETCH = """
SELECT method, request_hash, result, error_reason, error_message, error_metadata
FROM idempotency_records WHERE user_id = $1 AND request_id = $2
"""

_STORE = """
UPDATE idempotency_records r SET result = v.result
FROM unnest($1::text[], $2::text[], $3::jsonb[]) AS v(user_id, request_id, result)
WHERE r.user_id = v.user_id AND r.request_id = v.request_id
"""

_STORE_REFUSALS = """
UPDATE idempotency_records r
SET error_reason = v.reason, error_message = v.message, error_metadata = v.metadata
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[])
     AS v(user_id, request_id, reason, message, metadata)
WHERE r.user_id = v.user_id AND r.request_id = v.request_id
"""

# Records older than the retention are removed in bounded batches (the monthly rollover
# calls this), so the table does not grow without end and no delete is one huge transaction.
_PURGE = """
DELETE FROM idempotency_records WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM idempotency_records WHERE created_at < $1 LIMIT $2))
"""

_ENCODER = msgspec.json.Encoder()


@dataclasses.dataclass(frozen=True)
class Guard:
    """One request's idempotency key and the digest of what was sent under it."""

    scope: str
    request_id: str
    method: str
    digest: bytes

    @property
    def key(self) -> tuple[str, str]:
        return (self.scope, self.request_id)


@dataclasses.dataclass(frozen=True)
class Outcome(Generic[R]):
    """A request's result, and whether it is the stored one of an earlier application."""

    result: R
    replayed: bool


Work = Callable[[Connection, Clock], Awaitable[R]]


async def execute(
    pool: Pool,
    clock: Clock,
    guard: Guard,
    result_type: type[R],
    work: Work[R],
    *,
    refuses_before_writing: bool = False,
) -> Outcome[R]:
    """Run ``work`` at most once per key, in one transaction with its guard.

    ``refuses_before_writing``: the work decides every refusal before its first write of its
    own (only bookkeeping that is true either way, such as recording due expiries, may come
    first), so no savepoint is needed to undo a refused attempt; everything else gets one.
    """

    async def transaction(conn: Connection) -> Outcome[R] | errors.LedgerError:
        if not await claim(conn, [guard], clock.now()):
            return await replay(conn, guard, result_type)
        try:
            if refuses_before_writing:
                result = await work(conn, clock)
            else:
                # A savepoint: a refusal rolls back whatever the work wrote before it was
                # refused, so "a refusal changes nothing" holds by construction.
                async with conn.transaction():
                    result = await work(conn, clock)
        except errors.LedgerError as exc:
            if not exc.stored:
                raise
            await store_refusals(conn, [(guard, exc)])
            return exc
        await store(conn, [(guard, result)])
        return Outcome(result, replayed=False)

    outcome = await db.run_transaction(pool, transaction)
    if isinstance(outcome, errors.LedgerError):
        raise outcome
    return outcome


async def claim(
    conn: Connection, guards: Sequence[Guard], now: dt.datetime
) -> set[tuple[str, str]]:
    """Claim every guard's key; return the keys this call claimed (the others exist)."""
    rows = await conn.fetch(
        _CLAIM,
        [g.scope for g in guards],
        [g.request_id for g in guards],
        [g.method for g in guards],
        [g.digest for g in guards],
        now,
    )
    return {(r["user_id"], r["request_id"]) for r in rows}


async def replay(
    conn: Connection, guard: Guard, result_type: type[R]
) -> Outcome[R] | errors.LedgerError:
    """The stored outcome of a key claimed earlier: its result, or its stored refusal (returned,
    not raised, so that the caller's transaction still commits what it did for others)."""
    row = await conn.fetchrow(_FETCH, guard.scope, guard.request_id)
    if row is None:
        # Only when the monthly purge removed the record between our claim and this read.
        raise errors.unavailable("the request_id's record was just purged; retry")
    if row["method"] != guard.method or bytes(row["request_hash"]) != guard.digest:
        return errors.request_id_reused(guard.request_id)
    if row["error_reason"] is not None:
        return errors.LedgerError(
            row["error_reason"], row["error_message"], json.loads(row["error_metadata"] or "{}")
        )
    if row["result"] is None:
        raise AssertionError(f"{guard.key}: a committed record without an outcome")
    return Outcome(msgspec.json.decode(row["result"], type=result_type), replayed=True)


async def store(conn: Connection, done: Sequence[tuple[Guard, Any]]) -> None:
    """Write each key's result (one statement for a whole batch)."""
    if done:
        await conn.execute(
            _STORE,
            [g.scope for g, _ in done],
            [g.request_id for g, _ in done],
            [_ENCODER.encode(result).decode() for _, result in done],
        )


async def store_refusals(
    conn: Connection, refused: Sequence[tuple[Guard, errors.LedgerError]]
) -> None:
    """Write each key's stored refusal (one statement for a whole batch)."""
    if refused:
        await conn.execute(
            _STORE_REFUSALS,
            [g.scope for g, _ in refused],
            [g.request_id for g, _ in refused],
            [e.reason for _, e in refused],
            [e.message for _, e in refused],
            [json.dumps(e.metadata, sort_keys=True) for _, e in refused],
        )


async def purge_expired(pool: Pool, now: dt.datetime) -> int:
    """Delete idempotency records past their retention; return how many."""
    cutoff = now - dt.timedelta(days=limits.IDEMPOTENCY_RETENTION_DAYS)
    purged = 0
    while True:
        status = await db.run_transaction(
            pool, lambda conn: conn.execute(_PURGE, cutoff, limits.IDEMPOTENCY_PURGE_BATCH_ROWS)
        )
        deleted = int(status.split()[-1])
        purged += deleted
        if deleted < limits.IDEMPOTENCY_PURGE_BATCH_ROWS:
            return purged
