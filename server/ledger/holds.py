"""Holds: two-phase debits (Authorize, then Capture or Void), as TigerBeetle's pending transfers.

Authorize takes the amount out of the lots that apply to its agent at once (in burn-down
order; a hold never overdraws, whatever the account's overdraft limit) and records which
lot portions the hold reserved (``hold_lots``): held credits stay in the balance but stop
being available. Capture spends up to the held amount from those same portions and gives
the rest back; Void or expiry gives everything back. A hold is finalized once.
An expired hold is released by the account's expiry sweep, which every touch of the
account runs when due, so an expired hold never stays held whether or not a sweeper ran.

**A lot that expires while a hold reserves part of it.** The hold took its credits out of the
lot while the lot was live, so they are the hold's: a Capture before the hold's own expiry
spends them, even after the lot's expiry (as a card authorization is honoured after the card
is renewed). What the capture does not spend, and everything a Void or the hold's expiry gives
back, returns to the lot and expires at once if the lot has (``lots.give_back``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid
from collections.abc import Sequence

import asyncpg
from creditwallet.server import errors
from creditwallet.server.clock import Clock
from creditwallet.server.db import Connection
from creditwallet.server.ledger import accounts, history, lots, members, streaks
from creditwallet.server.ledger.debit import (
    DebitCommand,
    check_not_in_debt,
    check_reservable,
    cost_of,
)
from creditwallet.server.ledger.types import Account, Balances


@dataclasses.dataclass(frozen=True)
class AuthorizeCommand(DebitCommand):
    """A debit's fields, and how long the hold lives."""

    ttl_seconds: int


@dataclasses.dataclass(frozen=True)
class AuthorizeResult:
    hold_id: uuid.UUID
    expires_at: dt.datetime
    held_micros: int
    balances: Balances


@dataclasses.dataclass(frozen=True)
class CaptureResult:
    transaction_id: int
    charged_micros: int
    released_micros: int
    balances: Balances
    reward: streaks.Reward | None


@dataclasses.dataclass(frozen=True)
class VoidResult:
    released_micros: int
    balances: Balances


_INSERT_HOLD = """
INSERT INTO holds (user_id, hold_id, status, amount_micros, request_id, agent_id, quantity,
                   session_id, metadata, expires_at, created_at, member_id)
VALUES ($1, $2, 'pending', $3, $4, $5, $6, $7, $8::jsonb, $9, $10, $11)
"""

_INSERT_PORTIONS = """
INSERT INTO hold_lots (user_id, hold_id, lot_id, amount_micros)
SELECT $1, $2, p.lot_id, p.amount FROM unnest($3::bigint[], $4::bigint[]) AS p(lot_id, amount)
"""

_HOLD_ACCOUNT = f"""
UPDATE credits SET held_micros = held_micros + $2,
    next_expiry_at = LEAST(next_expiry_at, $3), updated_at = $4
WHERE user_id = $1
RETURNING {Account.COLUMNS}
"""

_GET_HOLD = """
SELECT hold_id, status, amount_micros, agent_id, quantity, session_id, metadata, expires_at,
       member_id
FROM holds WHERE user_id = $1 AND hold_id = $2
"""

# The reserved portions, in the burn-down order of their lots: a partial capture spends
# the soonest-expiring credits and gives back the longest-lived ones.
_PORTIONS = f"""
SELECT h.lot_id, h.amount_micros FROM hold_lots h
JOIN credit_lots l ON l.user_id = h.user_id AND l.lot_id = h.lot_id
WHERE h.user_id = $1 AND h.hold_id = $2
ORDER BY {lots.ordered("l")}
"""

_FINALIZE = """
UPDATE holds SET status = $3, captured_micros = $4, finalized_at = $5,
    capture_transaction_id = $6
WHERE user_id = $1 AND hold_id = $2
"""

_CONSUMPTIONS = """
INSERT INTO lot_consumptions (user_id, transaction_id, lot_id, amount_micros)
SELECT $1, $2, p.lot_id, p.amount FROM unnest($3::bigint[], $4::bigint[]) AS p(lot_id, amount)
"""

_RELEASE_ACCOUNT = f"""
UPDATE credits SET balance_micros = balance_micros - $2, held_micros = held_micros - $3,
    updated_at = $4, last_transaction_id = coalesce($5, last_transaction_id)
WHERE user_id = $1
RETURNING {Account.COLUMNS}
"""


async def authorize(conn: Connection, cmd: AuthorizeCommand, clock: Clock) -> AuthorizeResult:
    locked = await accounts.lock(conn, cmd.user_id, clock)
    account, now = locked.account, locked.now
    amount = await cost_of(conn, cmd.amount_micros, cmd.agent_id, cmd.quantity)
    agent = cmd.spent_for
    check_not_in_debt(account)
    check_reservable(account, await lots.applicable_micros(conn, account, agent, now), amount)
    if cmd.member_id is not None:
        await members.check_room(conn, cmd.user_id, cmd.member_id, amount, now)
    hold_id = uuid.uuid4()
    expires_at = now + dt.timedelta(seconds=cmd.ttl_seconds)
    portions = await lots.consume(conn, cmd.user_id, amount, now, agent)
    await conn.execute(
        _INSERT_HOLD,
        cmd.user_id,
        hold_id,
        amount,
        cmd.request_id,
        agent,
        (cmd.quantity or 1) if cmd.agent_id is not None else None,
        cmd.session_id or None,
        json.dumps(dict(cmd.metadata), sort_keys=True) if cmd.metadata else None,
        expires_at,
        now,
        cmd.member_id,
    )
    await conn.execute(
        _INSERT_PORTIONS, cmd.user_id, hold_id, [p[0] for p in portions], [p[1] for p in portions]
    )
    row = await conn.fetchrow(_HOLD_ACCOUNT, cmd.user_id, amount, expires_at, now)
    assert row is not None
    return AuthorizeResult(hold_id, expires_at, amount, Balances.of(Account.from_row(row)))


async def capture(
    conn: Connection,
    user_id: str,
    hold_id: uuid.UUID,
    amount_micros: int | None,
    request_id: str,
    clock: Clock,
) -> CaptureResult:
    locked = await accounts.lock(conn, user_id, clock)
    account, now = locked.account, locked.now
    hold = await _pending_hold(conn, user_id, hold_id)
    held = hold["amount_micros"]
    charge = held if amount_micros is None else amount_micros
    if charge > held:
        raise errors.invalid("amount_micros", f"amount_micros exceeds the held {held}")
    spent, given_back = _split(await conn.fetch(_PORTIONS, user_id, hold_id), charge)
    tx_id = await history.append(
        conn,
        user_id,
        "debit",
        -charge,
        account.balance_micros - charge,
        now,
        request_id=request_id,
        agent_id=hold["agent_id"],
        quantity=hold["quantity"],
        session_id=hold["session_id"],
        hold_id=hold_id,
        metadata=json.loads(hold["metadata"]) if hold["metadata"] else None,
        member_id=hold["member_id"],
    )
    await conn.execute(_CONSUMPTIONS, user_id, tx_id, [p[0] for p in spent], [p[1] for p in spent])
    await conn.execute(_FINALIZE, user_id, hold_id, "captured", charge, now, tx_id)
    row = await conn.fetchrow(_RELEASE_ACCOUNT, user_id, charge, held, now, tx_id)
    assert row is not None
    account = await lots.give_back(conn, Account.from_row(row), given_back, now)
    reward, account = await streaks.record_debit(conn, account, now)
    return CaptureResult(tx_id, charge, held - charge, Balances.of(account), reward)


async def void(conn: Connection, user_id: str, hold_id: uuid.UUID, clock: Clock) -> VoidResult:
    locked = await accounts.lock(conn, user_id, clock)
    now = locked.now
    hold = await _pending_hold(conn, user_id, hold_id)
    held = hold["amount_micros"]
    portions = [
        (p["lot_id"], p["amount_micros"]) for p in await conn.fetch(_PORTIONS, user_id, hold_id)
    ]
    await conn.execute(_FINALIZE, user_id, hold_id, "voided", 0, now, None)
    row = await conn.fetchrow(_RELEASE_ACCOUNT, user_id, 0, held, now, None)
    assert row is not None
    account = await lots.give_back(conn, Account.from_row(row), portions, now)
    return VoidResult(held, Balances.of(account))


async def _pending_hold(conn: Connection, user_id: str, hold_id: uuid.UUID) -> asyncpg.Record:
    hold = await conn.fetchrow(_GET_HOLD, user_id, hold_id)
    if hold is None:
        # Not this account's hold (or no hold at all): the same answer either way, so a
        # caller learns nothing of other accounts' holds.
        raise errors.not_found("HOLD_NOT_FOUND", "no such hold", hold_id=str(hold_id))
    if hold["status"] == "expired":
        raise errors.precondition(
            "HOLD_EXPIRED", "the hold expired and was released", hold_id=str(hold_id)
        )
    if hold["status"] != "pending":
        raise errors.precondition(
            "HOLD_FINALIZED", f"the hold is already {hold['status']}", hold_id=str(hold_id)
        )
    return hold


def _split(
    portions: Sequence[asyncpg.Record], charge: int
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Split reserved portions into (spent, given back) with ``charge`` spent first."""
    spent: list[tuple[int, int]] = []
    given_back: list[tuple[int, int]] = []
    left = charge
    for p in portions:
        lot_id, amount = p["lot_id"], p["amount_micros"]
        take = min(left, amount)
        left -= take
        if take:
            spent.append((lot_id, take))
        if amount - take:
            given_back.append((lot_id, amount - take))
    return spent, given_back
