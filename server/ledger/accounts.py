"""The account row: created once with its trial lot, locked first by every writer, and the
source of every write's time.

Every write to an account's lots, holds or history first locks its ``credits`` row (``lock``):
that one lock serializes all writers of the account, so lots need no row locks of their own
and the burn-down order is decided by one writer at a time.

**Time.** A write's ``now`` is read from the clock *after* the lock is granted and is never
earlier than the account's last write (``updated_at``): ``max(clock, updated_at)``. Why both:

- after the lock, because a write that read the clock before waiting for the lock would act
  on a past moment: a lot that expired while it waited would still look live to it, and it
  would spend credits that another write had already seen expire;
- never before the last write, because replicas' clocks differ and a host clock can step
  back: per account, the history's times then still follow commit order, so "expired at E"
  and "spent at t < E" can never both be true of one lot in the wrong order.

A replica whose clock runs ahead moves its accounts' time ahead with it (lots expire early,
never late); keep the hosts on NTP. The database's own clock would avoid even that, but it
cannot be injected, and the tests cross days and months on an injected clock.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from creditwallet.server import errors
from creditwallet.server.clock import Clock
from creditwallet.server.db import Connection
from creditwallet.server.ledger import lots
from creditwallet.server.ledger.types import Account, default_expiry

_LOCK = f"SELECT {Account.COLUMNS} FROM credits WHERE user_id = $1 FOR UPDATE"

# ORDER BY sits below the row locking, so the rows are locked in user_id order.
_LOCK_MANY = f"""
SELECT {Account.COLUMNS} FROM credits WHERE user_id = ANY($1::text[]) ORDER BY user_id FOR UPDATE
"""

_READ = f"SELECT {Account.COLUMNS} FROM credits WHERE user_id = $1"

_CREATE = f"""
INSERT INTO credits (user_id, created_at, updated_at) VALUES ($1, $2, $2)
ON CONFLICT (user_id) DO NOTHING
RETURNING {Account.COLUMNS}
"""


@dataclasses.dataclass(frozen=True)
class Locked:
    """An account its writer holds, and the time of that write."""

    account: Account
    now: dt.datetime


def ledger_time(clock: Clock, account: Account) -> dt.datetime:
    """The time of a write to ``account``: the clock, never before the account's last write."""
    return max(clock.now(), account.updated_at)


async def lock(conn: Connection, user_id: str, clock: Clock) -> Locked:
    """Lock the account, take the write's time, and record its due expiries (the "touch")."""
    row = await conn.fetchrow(_LOCK, user_id)
    if row is None:
        raise account_not_found(user_id)
    account = Account.from_row(row)
    now = ledger_time(clock, account)
    return Locked(await touch(conn, account, now), now)


async def lock_many(conn: Connection, user_ids: list[str], clock: Clock) -> dict[str, Locked]:
    """Lock several accounts at once, in user_id order (the order every batch uses).

    The clock is read once, after the last lock: each account's time is that, or its own last
    write if later. Each account is touched (its due expiries recorded) before it is returned.
    """
    rows = await conn.fetch(_LOCK_MANY, sorted(set(user_ids)))
    read_at = clock.now()
    found = {}
    for row in rows:
        account = Account.from_row(row)
        now = max(read_at, account.updated_at)
        found[account.user_id] = Locked(await touch(conn, account, now), now)
    return found


async def touch(conn: Connection, account: Account, now: dt.datetime) -> Account:
    """Record the account's due expiries, if any (the caller holds its lock)."""
    if account.sweep_due(now):
        return await lots.sweep(conn, account, now)
    return account


async def read(conn: Connection, user_id: str) -> Account:
    row = await conn.fetchrow(_READ, user_id)
    if row is None:
        raise account_not_found(user_id)
    return Account.from_row(row)


async def ensure(
    conn: Connection, user_id: str, clock: Clock, trial_micros: int
) -> tuple[Locked, bool]:
    """Create the account with its trial lot on the first call; return (locked, created)."""
    now = clock.now()
    row = await conn.fetchrow(_CREATE, user_id, now)
    if row is None:
        return await lock(conn, user_id, clock), False
    account = Account.from_row(row)
    if trial_micros > 0:
        account = (
            await lots.grant(
                conn,
                account,
                source="trial",
                amount_micros=trial_micros,
                now=now,
                expires_at=default_expiry("trial", now),
                grant_key="trial",
            )
        ).account
    return Locked(account, now), True


async def create_without_trial(conn: Connection, user_id: str, clock: Clock) -> Locked:
    """Lock the account, creating it bare if needed (grants and purchases for new users)."""
    now = clock.now()
    row = await conn.fetchrow(_CREATE, user_id, now)
    if row is not None:
        return Locked(Account.from_row(row), now)
    return await lock(conn, user_id, clock)


def account_not_found(user_id: str) -> errors.LedgerError:
    return errors.not_found("ACCOUNT_NOT_FOUND", "no account for user_id", user_id=user_id)
