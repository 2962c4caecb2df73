"""Idempotency records: claim a request_id, replay its stored outcome, or refuse reuse.

The guard lives in the same transaction as the write it protects (AIP-155, as Stripe's
idempotency keys and TigerBeetle's transfer ids):

1. ``claim`` inserts the record first. A concurrent caller with the same key blocks on
   the unique index until the first commits, then finds the record: one application,
   however many callers.
2. The work runs. A state-dependent refusal (``LedgerError.stored``) is written into the
   record and committed, so a retry never turns into a different outcome; a malformed
   request rolls the claim back, so the caller may fix it and retry the same key.
3. ``store`` writes the response, which a replay returns with ``replayed = true``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import grpc
from creditwallet.core import limits
from creditwallet.server import db, errors
from creditwallet.server.clock import Clock
from creditwallet.server.db import Connection, Pool
from google.protobuf.message import Message

R = TypeVar("R", bound=Message)

_CLAIM = """
INSERT INTO idempotency_records (user_id, request_id, method, request_hash, created_at)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (user_id, request_id) DO NOTHING
RETURNING true
"""

_FETCH = """
SELECT method, request_hash, response, error_code, error_reason, error_message, error_metadata
FROM idempotency_records WHERE user_id = $1 AND request_id = $2
"""

_STORE_RESPONSE = """
UPDATE idempotency_records SET response = $3 WHERE user_id = $1 AND request_id = $2
"""

_STORE_ERROR = """
UPDATE idempotency_records
SET error_code = $3, error_reason = $4, error_message = $5, error_metadata = $6::jsonb
WHERE user_id = $1 AND request_id = $2
"""

# Idempotency scope for requests that belong to no account yet (provider events).
BILLING_SCOPE = "~billing"


def request_hash(method: str, request: Message) -> bytes:
    return hashlib.sha256(
        method.encode() + b"\0" + request.SerializeToString(deterministic=True)
    ).digest()


async def execute(
    pool: Pool,
    clock: Clock,
    *,
    scope: str,
    request_id: str,
    method: str,
    request: Message,
    response_type: type[R],
    work: Callable[[Connection, dt.datetime], Awaitable[R]],
    refuses_before_writing: bool = False,
) -> R:
    """Run ``work`` at most once per (scope, request_id), in one transaction with its guard.

    ``refuses_before_writing``: the work decides every refusal before its first write of its
    own (only bookkeeping that is true either way, such as recording due expiries, may come
    first), so no savepoint is needed to undo a refused attempt. The debit path declares it
    and saves two round trips; everything else gets the savepoint.
    """
    guard = Guard(scope, request_id, method, request_hash(method, request), response_type)

    async def transaction(conn: Connection) -> R | errors.LedgerError:
        return await guard.attempt(conn, clock.now(), work, refuses_before_writing)

    outcome = await db.run_transaction(pool, transaction)
    if isinstance(outcome, errors.LedgerError):
        raise outcome
    return outcome


@dataclasses.dataclass(frozen=True)
class Guard(Generic[R]):
    """One request's idempotency guard, usable alone or as one of a batch's requests."""

    scope: str
    request_id: str
    method: str
    digest: bytes
    response_type: type[R]

    async def attempt(
        self,
        conn: Connection,
        now: dt.datetime,
        work: Callable[[Connection, dt.datetime], Awaitable[R]],
        refuses_before_writing: bool,
    ) -> R | errors.LedgerError:
        """Claim, run and record, inside the caller's transaction.

        Returns the response, or the stored refusal (committed with the transaction, then
        raised to the caller). Malformed-request refusals propagate and roll back.
        """
        claimed = await conn.fetchval(
            _CLAIM, self.scope, self.request_id, self.method, self.digest, now
        )
        if not claimed:
            return await _replay(
                conn, self.scope, self.request_id, self.method, self.digest, self.response_type
            )
        try:
            if refuses_before_writing:
                response = await work(conn, now)
            else:
                # A savepoint: a refusal rolls back whatever the work wrote before it was
                # refused, so "a refusal changes nothing" holds by construction.
                async with conn.transaction():
                    response = await work(conn, now)
        except errors.LedgerError as exc:
            if not exc.stored:
                raise
            await _store_error(conn, self.scope, self.request_id, exc)
            return exc
        await conn.execute(
            _STORE_RESPONSE, self.scope, self.request_id, response.SerializeToString()
        )
        return response


async def _replay(
    conn: Connection,
    scope: str,
    request_id: str,
    method: str,
    digest: bytes,
    response_type: type[R],
) -> R:
    row = await conn.fetchrow(_FETCH, scope, request_id)
    if row is None:
        # Only when the monthly purge removed the record between our claim and this read.
        raise errors.unavailable("the request_id's record was just purged; retry")
    if row["method"] != method or bytes(row["request_hash"]) != digest:
        raise errors.request_id_reused(request_id)
    if row["error_code"] is not None:
        raise errors.LedgerError(
            grpc.StatusCode(_code_tuple(row["error_code"])),
            row["error_reason"],
            row["error_message"],
            json.loads(row["error_metadata"] or "{}"),
        )
    response = response_type()
    response.ParseFromString(row["response"])
    return as_replayed(response)


def as_replayed(response: R) -> R:
    """The response as a replay returns it: ``replayed = true`` (every mutating response has it)."""
    replayed = type(response)()
    replayed.CopyFrom(response)
    if "replayed" in replayed.DESCRIPTOR.fields_by_name:
        setattr(replayed, "replayed", True)  # noqa: B010
    return replayed


def _code_tuple(value: int) -> tuple[int, str]:
    for code in grpc.StatusCode:
        if code.value[0] == value:
            return code.value  # type: ignore[no-any-return]
    raise ValueError(value)


async def _store_error(
    conn: Connection, scope: str, request_id: str, exc: errors.LedgerError
) -> None:
    await conn.execute(
        _STORE_ERROR,
        scope,
        request_id,
        exc.code.value[0],
        exc.reason,
        exc.message,
        json.dumps(exc.metadata, sort_keys=True),
    )


# Records older than the retention are removed in bounded batches (the monthly rollover
# calls this), so the table does not grow without end and no delete is one huge transaction.
_PURGE = """
DELETE FROM idempotency_records WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM idempotency_records WHERE created_at < $1 LIMIT $2))
"""


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


# The same guard for a batch of requests (group commit): one statement claims them all,
# one stores all their responses. Rows go in (scope, request_id) order, the order in which
# every batch takes its claims, so two batches never wait on each other's claims in a cycle.
_CLAIM_MANY = """
INSERT INTO idempotency_records (user_id, request_id, method, request_hash, created_at)
SELECT c.user_id, c.request_id, c.method, c.request_hash, $5
FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[])
     AS c(user_id, request_id, method, request_hash)
ON CONFLICT (user_id, request_id) DO NOTHING
RETURNING user_id, request_id
"""

_STORE_RESPONSES = """
UPDATE idempotency_records r SET response = v.response
FROM unnest($1::text[], $2::text[], $3::bytea[]) AS v(user_id, request_id, response)
WHERE r.user_id = v.user_id AND r.request_id = v.request_id
"""


async def claim_many(
    conn: Connection, guards: list[Guard[Any]], now: dt.datetime
) -> set[tuple[str, str]]:
    """Claim every guard's key; return the keys this call claimed (the others exist)."""
    rows = await conn.fetch(
        _CLAIM_MANY,
        [g.scope for g in guards],
        [g.request_id for g in guards],
        [g.method for g in guards],
        [g.digest for g in guards],
        now,
    )
    return {(r["user_id"], r["request_id"]) for r in rows}


async def store_responses(conn: Connection, done: list[tuple[Guard[Any], Message]]) -> None:
    if done:
        await conn.execute(
            _STORE_RESPONSES,
            [g.scope for g, _ in done],
            [g.request_id for g, _ in done],
            [r.SerializeToString() for _, r in done],
        )


async def replay(conn: Connection, guard: Guard[R]) -> R:
    """The stored outcome of a key claimed earlier (raises a stored refusal)."""
    return await _replay(
        conn, guard.scope, guard.request_id, guard.method, guard.digest, guard.response_type
    )


async def store_error(conn: Connection, guard: Guard[Any], exc: errors.LedgerError) -> None:
    await _store_error(conn, guard.scope, guard.request_id, exc)
