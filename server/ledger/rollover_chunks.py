"""One chunk of the rollover: a few statements for all of its accounts, never one per account.

A chunk is one transaction over up to ``limits.ROLLOVER_CHUNK_ACCOUNTS`` accounts, locked
first in ``user_id`` order (the order of every multi-account writer, so no deadlock). Then:

- **reads**, one statement per table for all the locked accounts (``user_id = ANY``, an index
  condition): their pending holds, their live expiring lots; for the carry-over, their ended
  periods, their live lots and their plans' allotments;
- **the arithmetic in Python**, account by account, as ``lots.sweep`` and
  ``subscriptions.cap_carried`` do it for one account: which holds and lots are due at the
  account's own time (the chunk's clock, read after the locks, or the account's last write
  if later), each history row's balance after it, the next expiry, the cap's cuts;
- **writes**, one statement per kind of work, driven by ``unnest`` of those results and
  reaching every row by its primary key: the due holds released (their portions given back),
  the due lots zeroed with one ``expire`` history row each, the cap's cuts, each account's
  row written once; the history rows' events are emitted by the same statement, in one
  ``cw_emit_events`` call (the chunk sets ``creditwallet.history_events``, so the row trigger
  stands aside);
- **the balance alerts**, judged once for all the locked accounts after the last write
  (``cw_judge_available``, the rules the deferred trigger applies to one account; the chunk
  sets ``creditwallet.available_judged``, so no trigger is queued per account).

No statement joins two chunk-sized sets in SQL whose plan could depend on the planner's
estimates: the reads are single-table index scans, the writes key lookups. So the cost of
a chunk is flat, whatever the size of the tables, and each account costs a few rows of work.

The one step left per account is paying recorded debt from credits a released hold gave
back (``lots.settle_debt``, the burn-down's own code): it needs a hold released from an
account in debt, which is rare.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable

import asyncpg
from creditwallet.server.clock import Clock
from creditwallet.server.db import Connection
from creditwallet.server.ledger import accounts, carry, lots
from creditwallet.server.ledger.types import Account

# The chunk's history rows emit their events set-wise (see _EMIT_EXPIRED); the per-account
# steps (``_one_at_a_time``) hand them back to the row trigger meanwhile.
_STATEMENT_EVENTS = "SELECT set_config('creditwallet.history_events', 'statement', true)"
_ROW_EVENTS = "SELECT set_config('creditwallet.history_events', 'row', true)"
# The chunk's balance alerts (balance.low, balance.depleted, auto-recharge) are judged in one
# call after its last write, for every account it locked, against the available balance it
# found under the lock; its updates queue no per-account trigger meanwhile (migration 0017).
_CHUNK_STARTS = (
    "SELECT set_config('creditwallet.history_events', 'statement', true), "
    "set_config('creditwallet.available_judged', 'statement', true)"
)
_JUDGE_AVAILABLE = "SELECT cw_judge_available($1::text[], $2::bigint[])"

# The chunk's accounts whose next expiry has passed, locked in user_id order, re-checked once
# locked (another run or a writer's touch may have swept one meanwhile).
_LOCK_DUE = f"""
SELECT {Account.COLUMNS} FROM credits
WHERE user_id = ANY($1::text[]) AND next_expiry_at <= $2
ORDER BY user_id FOR UPDATE
"""

_LOCK_ALL = f"""
SELECT {Account.COLUMNS} FROM credits WHERE user_id = ANY($1::text[]) ORDER BY user_id FOR UPDATE
"""

_READ = f"SELECT {Account.COLUMNS} FROM credits WHERE user_id = ANY($1::text[])"

_PENDING_HOLDS = """
SELECT user_id, hold_id, expires_at FROM holds
WHERE user_id = ANY($1::text[]) AND status = 'pending'
"""

_LIVE_LOTS = """
SELECT user_id, lot_id, source, remaining_micros, expires_at, granted_at FROM credit_lots
WHERE user_id = ANY($1::text[]) AND remaining_micros > 0
"""

# Due holds released, each at its account's time: status, the portions back to their lots,
# the held credits. Returns the accounts concerned with their debt (paid next, from what came
# back).
_RELEASE_HOLDS = """
WITH due AS (
    SELECT * FROM unnest($1::text[], $2::uuid[], $3::timestamptz[]) AS d (user_id, hold_id, at)
), released AS (
    UPDATE holds h SET status = 'expired', finalized_at = due.at FROM due
    WHERE h.user_id = due.user_id AND h.hold_id = due.hold_id AND h.status = 'pending'
    RETURNING h.user_id, h.hold_id, h.amount_micros, due.at
), portions AS (
    SELECT hl.user_id, hl.lot_id, sum(hl.amount_micros)::bigint AS amount
    FROM released r JOIN hold_lots hl ON hl.user_id = r.user_id AND hl.hold_id = r.hold_id
    GROUP BY hl.user_id, hl.lot_id
), restored AS (
    UPDATE credit_lots l SET remaining_micros = l.remaining_micros + p.amount FROM portions p
    WHERE l.user_id = p.user_id AND l.lot_id = p.lot_id
), totals AS (
    SELECT user_id, sum(amount_micros)::bigint AS amount, max(at) AS at
    FROM released GROUP BY user_id
)
UPDATE credits c SET held_micros = c.held_micros - t.amount, updated_at = t.at
FROM totals t WHERE c.user_id = t.user_id
RETURNING c.user_id, c.debt_micros
"""

# The events of a statement's expire rows (``history``), in one call: each account's in the
# order of its rows, as the row trigger would have emitted them.
_EMIT_EXPIRED = """
emitted AS (
    SELECT cw_emit_events(
        array_agg(user_id ORDER BY user_id, transaction_id),
        array_agg('credits.expired'::text ORDER BY user_id, transaction_id),
        array_agg(created_at ORDER BY user_id, transaction_id),
        array_agg(cw_history_event_body('expire', transaction_id, amount_micros,
                      balance_after_micros, source, NULL, NULL, NULL, NULL, NULL, NULL,
                      metadata)
                  ORDER BY user_id, transaction_id),
        false) AS done
    FROM history
)"""

# Expire rows ($1..$6, in each account's order) and the accounts' rows ($7..$11): the lots
# zeroed or cut, one history row each with its event, each account written once (its
# balance, next expiry, time and newest history row). An account's time moves only when
# something was recorded. Returns how many accounts did not end at the balance computed for
# them (always 0: a check, as lots._expire_due makes for one account).
_WRITE_EXPIRIES = f"""
WITH cuts AS (
    SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[], $5::bigint[],
                         $6::text[])
        WITH ORDINALITY AS r (user_id, lot_id, source, amount, balance_after, reason, ord)
), acct AS (
    SELECT * FROM unnest($7::text[], $8::bigint[], $9::bigint[], $10::timestamptz[],
                         $11::timestamptz[])
        AS a (user_id, expired, balance_after, next_expiry_at, at)
), shrunk AS (
    UPDATE credit_lots l SET remaining_micros = l.remaining_micros - cuts.amount FROM cuts
    WHERE l.user_id = cuts.user_id AND l.lot_id = cuts.lot_id
), history AS (
    INSERT INTO credit_transactions (user_id, type, source, amount_micros, balance_after_micros,
                                     metadata, created_at)
    SELECT cuts.user_id, 'expire', cuts.source, -cuts.amount, cuts.balance_after,
           jsonb_build_object('lot_id', cuts.lot_id::text, 'reason', cuts.reason), acct.at
    FROM cuts JOIN acct ON acct.user_id = cuts.user_id ORDER BY cuts.ord
    RETURNING user_id, transaction_id, amount_micros, balance_after_micros, source, metadata,
              created_at
), {_EMIT_EXPIRED}, per AS (
    SELECT user_id, max(transaction_id) AS last_tx FROM history GROUP BY user_id
), moved AS (
    UPDATE credits c SET balance_micros = c.balance_micros - acct.expired,
        next_expiry_at = CASE WHEN $12 THEN acct.next_expiry_at ELSE c.next_expiry_at END,
        updated_at = CASE WHEN per.last_tx IS NULL THEN c.updated_at ELSE acct.at END,
        last_transaction_id = coalesce(per.last_tx, c.last_transaction_id)
    FROM acct LEFT JOIN per ON per.user_id = acct.user_id
    WHERE c.user_id = acct.user_id
    RETURNING c.balance_micros = acct.balance_after AS exact
)
SELECT (SELECT count(*) FROM moved WHERE NOT exact) AS wrong,
       (SELECT count(*) FROM emitted) AS emitted
"""

# The claim: each ended period ($2: the run's start) is settled once, by whoever locks its
# account first. All of an account's ended periods are settled together, so its carried
# credits count once a run. The cap they are settled at (the plan's allotment) is recorded
# on each: credits that come back to their lots later count against it (``carry``).
_CLAIM = """
UPDATE subscription_periods SET carry_settled_at = $2,
    carry_cap_micros = (SELECT max(s.period_credits_micros) FROM subscriptions s
                        WHERE s.user_id = subscription_periods.user_id)
WHERE user_id = ANY($1::text[]) AND lot_id IS NOT NULL AND carry_settled_at IS NULL
  AND coalesce(ended_at, period_end) <= $2
RETURNING user_id
"""

# The cap recorded on the ended periods of the accounts a chunk capped, as cap_carried does.
_LOWER_CAPS = """
UPDATE subscription_periods p SET carry_cap_micros = LEAST(p.carry_cap_micros, c.allotment)
FROM unnest($1::text[], $2::bigint[]) AS c (user_id, allotment)
WHERE p.user_id = c.user_id AND p.lot_id IS NOT NULL AND coalesce(p.ended_at, p.period_end) <= $3
  AND (p.carry_cap_micros IS NULL OR p.carry_cap_micros > c.allotment)
"""

_ENDED_PERIOD_LOTS = """
SELECT user_id, lot_id FROM subscription_periods
WHERE user_id = ANY($1::text[]) AND lot_id IS NOT NULL AND coalesce(ended_at, period_end) <= $2
"""

_ALLOTMENTS = """
SELECT user_id, max(period_credits_micros)::bigint AS allotment FROM subscriptions
WHERE user_id = ANY($1::text[]) GROUP BY user_id
"""


@dataclasses.dataclass
class Summary:
    """What one run did (every count is this run's own work, not a month's total)."""

    period: str
    accounts_processed: int = 0
    credits_carried_micros: int = 0
    credits_expired_micros: int = 0
    holds_released: int = 0
    chunks: int = 0
    periods_settled: int = 0
    accounts_settled: int = 0
    accounts_capped: int = 0
    credits_capped_micros: int = 0

    def add(self, other: Summary) -> None:
        for field in dataclasses.fields(self):
            if field.name != "period":
                setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


@dataclasses.dataclass
class _Writes:
    """Rows for ``_WRITE_EXPIRIES``: the cuts (in each account's order) and the accounts."""

    cuts: list[tuple[str, int, str, int, int, str]] = dataclasses.field(default_factory=list)
    accounts: list[tuple[str, int, int, dt.datetime | None, dt.datetime]] = dataclasses.field(
        default_factory=list
    )

    def columns(self) -> list[list[object]]:
        cuts = [list(c) for c in zip(*self.cuts, strict=True)] or [[] for _ in range(6)]
        accts = [list(c) for c in zip(*self.accounts, strict=True)] or [[] for _ in range(5)]
        return [*cuts, *accts]


@dataclasses.dataclass(frozen=True)
class _State:
    """An account as the chunk has left it so far: its balance, its time, its live lots."""

    balance_micros: int
    updated_at: dt.datetime
    lots: list[asyncpg.Record]


async def expire(conn: Connection, *, ids: list[str], due: dt.datetime, clock: Clock) -> Summary:
    """One transaction: record the due expiries and holds of the chunk's accounts, and settle
    the carry-over of their ended periods (the period walk then finds them done)."""
    done = Summary("", chunks=1)
    await conn.execute(_CHUNK_STARTS)
    locked = [Account.from_row(r) for r in await conn.fetch(_LOCK_DUE, ids, due)]
    if locked:
        now = max(due, clock.now())  # after the locks: the chunk's time (each account's if later)
        done.accounts_processed = len(locked)
        states = await _sweep(conn, locked, now, done)
        await _settle(conn, [a.user_id for a in locked], now, due, done, states)
        await _judge(conn, locked)
    return done


async def settle(conn: Connection, *, users: list[str], due: dt.datetime, clock: Clock) -> Summary:
    """One transaction: settle the carry-over of the chunk's accounts' ended periods, capped.

    An account with an expiry due by its own time is swept first, as any write to it would.
    """
    done = Summary("", chunks=1)
    await conn.execute(_CHUNK_STARTS)
    locked = [Account.from_row(r) for r in await conn.fetch(_LOCK_ALL, users)]
    now = max(due, clock.now())
    swept = [a for a in locked if a.sweep_due(max(now, a.updated_at))]
    states = await _sweep(conn, swept, now, done) if swept else {}
    await _settle(conn, [a.user_id for a in locked], now, due, done, states)
    await _judge(conn, locked)
    return done


async def _judge(conn: Connection, locked: list[Account]) -> None:
    """The balance alerts of the chunk's accounts: as found under the lock against now."""
    await conn.execute(
        _JUDGE_AVAILABLE,
        [a.user_id for a in locked],
        [a.available_micros for a in locked],
    )


async def _settle(
    conn: Connection,
    users: list[str],
    now: dt.datetime,
    due: dt.datetime,
    done: Summary,
    states: dict[str, _State],
) -> None:
    """Claim the locked accounts' periods ended by ``due``, cap what they carry past them.

    ``states``: accounts the chunk has swept (the others are read here).
    """
    claimed = [r["user_id"] for r in await conn.fetch(_CLAIM, users, due)]
    if not claimed:
        return
    done.periods_settled += len(claimed)
    settled = sorted(set(claimed))
    done.accounts_settled += len(settled)
    ended: dict[str, set[int]] = defaultdict(set)
    for row in await conn.fetch(_ENDED_PERIOD_LOTS, settled, due):
        ended[row["user_id"]].add(row["lot_id"])
    allotments = {r["user_id"]: r["allotment"] for r in await conn.fetch(_ALLOTMENTS, settled)}
    unknown = [u for u in settled if u not in states and u in allotments]
    if unknown:
        live = _by_user(await conn.fetch(_LIVE_LOTS, unknown))
        for row in await conn.fetch(_READ, unknown):
            user_id = row["user_id"]
            states[user_id] = _State(row["balance_micros"], row["updated_at"], live[user_id])
    writes = _Writes()
    for user_id in settled:
        allotment = allotments.get(user_id)
        if allotment is None:
            continue
        state = states[user_id]
        at = max(now, state.updated_at)
        carried = sorted(
            (
                lot
                for lot in state.lots
                if lot["lot_id"] in ended[user_id]
                and (lot["expires_at"] is None or lot["expires_at"] > at)
            ),
            key=_soonest_expiring,
        )
        total = sum(lot["remaining_micros"] for lot in carried)
        done.credits_carried_micros += min(total, allotment)
        excess = total - allotment
        if excess <= 0:
            continue
        balance = state.balance_micros
        for lot in carried:
            if excess <= 0:
                break
            take = min(excess, lot["remaining_micros"])
            balance -= take
            excess -= take
            writes.cuts.append(
                (user_id, lot["lot_id"], "subscription", take, balance, "carry_over_cap")
            )
        capped = state.balance_micros - balance
        writes.accounts.append((user_id, capped, balance, None, at))
        done.accounts_capped += 1
        done.credits_capped_micros += capped
        done.credits_expired_micros += capped
    if writes.accounts:
        await _write(conn, writes, next_expiry=False)
        capped_users = [a[0] for a in writes.accounts]
        await conn.execute(_LOWER_CAPS, capped_users, [allotments[u] for u in capped_users], due)


async def _sweep(
    conn: Connection, locked: list[Account], now: dt.datetime, done: Summary
) -> dict[str, _State]:
    """Release the due holds and record the due expiries of locked accounts (``lots.sweep``).

    Returns the accounts as left (those that paid debt are left out: read them again).
    """
    users = [a.user_id for a in locked]
    at = {a.user_id: max(now, a.updated_at) for a in locked}
    holds = _by_user(await conn.fetch(_PENDING_HOLDS, users))
    due_holds = [
        (user_id, h["hold_id"])
        for user_id, pending in holds.items()
        for h in pending
        if h["expires_at"] <= at[user_id]
    ]
    in_debt: list[str] = []
    if due_holds:
        done.holds_released += len(due_holds)
        released = await conn.fetch(
            _RELEASE_HOLDS,
            [u for u, _ in due_holds],
            [h for _, h in due_holds],
            [at[u] for u, _ in due_holds],
        )
        in_debt = [r["user_id"] for r in released if r["debt_micros"] > 0]
    released_ids: set[uuid.UUID] = {h for _, h in due_holds}
    released_from = {u for u, _ in due_holds}
    if released_from:  # rare: what came back to a carried lot counts against its cap
        async with _one_at_a_time(conn):
            for user_id in sorted(released_from):
                account = await accounts.read(conn, user_id)
                await carry.enforce(conn, account, at[user_id])
        fresh = {
            r["user_id"]: Account.from_row(r) for r in await conn.fetch(_READ, list(released_from))
        }
        locked = [fresh.get(a.user_id, a) for a in locked]
    live = _by_user(await conn.fetch(_LIVE_LOTS, users))
    writes = _Writes()
    states: dict[str, _State] = {}
    for account in locked:
        user_id, when = account.user_id, at[account.user_id]
        balance = account.balance_micros
        later: list[dt.datetime] = [
            h["expires_at"] for h in holds.get(user_id, []) if h["hold_id"] not in released_ids
        ]
        kept = []
        for lot in sorted(live.get(user_id, []), key=_expiry_order):
            if lot["expires_at"] is not None and lot["expires_at"] <= when:
                balance -= lot["remaining_micros"]
                writes.cuts.append(
                    (
                        user_id,
                        lot["lot_id"],
                        lot["source"],
                        lot["remaining_micros"],
                        balance,
                        "rollover",
                    )
                )
                continue
            if lot["expires_at"] is not None:
                later.append(lot["expires_at"])
            kept.append(lot)
        expired = account.balance_micros - balance
        done.credits_expired_micros += expired
        writes.accounts.append((user_id, expired, balance, min(later, default=None), when))
        wrote = expired > 0 or user_id in released_from
        states[user_id] = _State(balance, when if wrote else account.updated_at, kept)
    await _write(conn, writes, next_expiry=True)
    if in_debt:  # rare: a hold released from an account in debt
        async with _one_at_a_time(conn):
            for user_id in in_debt:
                account = await accounts.read(conn, user_id)
                await lots.settle_debt(conn, account, max(now, account.updated_at))
                del states[user_id]
    return states


@contextlib.asynccontextmanager
async def _one_at_a_time(conn: Connection) -> AsyncIterator[None]:
    """Per-account ledger code inside a chunk: its history rows' events are the trigger's."""
    await conn.execute(_ROW_EVENTS)
    try:
        yield
    finally:
        await conn.execute(_STATEMENT_EVENTS)


async def _write(conn: Connection, writes: _Writes, *, next_expiry: bool) -> None:
    row = await conn.fetchrow(_WRITE_EXPIRIES, *writes.columns(), next_expiry)
    assert row is not None
    if row["wrong"]:
        raise AssertionError(f"rollover: {row['wrong']} accounts moved meanwhile under their lock")


def _by_user(rows: Iterable[asyncpg.Record]) -> dict[str, list[asyncpg.Record]]:
    found: dict[str, list[asyncpg.Record]] = defaultdict(list)
    for row in rows:
        found[row["user_id"]].append(row)
    return found


def _expiry_order(lot: asyncpg.Record) -> tuple[bool, dt.datetime, int]:
    """The order of an account's expire rows: by expiry, then lot (never-expiring last)."""
    expires = lot["expires_at"]
    return (expires is None, expires or lot["granted_at"], lot["lot_id"])


def _soonest_expiring(lot: asyncpg.Record) -> tuple[bool, dt.datetime, dt.datetime, int]:
    """The cap's order: soonest expiry first, never-expiring last, then the oldest grant."""
    expires = lot["expires_at"]
    return (expires is None, expires or lot["granted_at"], lot["granted_at"], lot["lot_id"])
