"""The account row: created once with its trial lot, and locked first by every writer.

Every write to an account's lots, holds or history first locks its ``credits`` row
(``lock``): that one lock serializes all writers of the account, so lots need no row
locks of their own and the burn-down order is decided by one writer at a time.
"""

from __future__ import annotations

import datetime as dt

from creditwallet.server import errors
from creditwallet.server.db import Connection
from creditwallet.server.ledger import lots
from creditwallet.server.ledger.types import Account, default_expiry

_LOCK = """
SELECT user_id, balance_micros, held_micros, debt_micros, next_expiry_at, created_at
FROM credits WHERE user_id = $1 FOR UPDATE
"""

# ORDER BY sits below the row locking, so the rows are locked in user_id order.
_LOCK_MANY = """
SELECT user_id, balance_micros, held_micros, debt_micros, next_expiry_at, created_at
FROM credits WHERE user_id = ANY($1::text[]) ORDER BY user_id FOR UPDATE
"""

_READ = """
SELECT user_id, balance_micros, held_micros, debt_micros, next_expiry_at, created_at
FROM credits WHERE user_id = $1
"""

_CREATE = """
INSERT INTO credits (user_id, created_at, updated_at) VALUES ($1, $2, $2)
ON CONFLICT (user_id) DO NOTHING
RETURNING user_id, balance_micros, held_micros, debt_micros, next_expiry_at, created_at
"""


async def lock(conn: Connection, user_id: str, now: dt.datetime) -> Account:
    """Lock the account and bring its expiries up to date (the "touch" of SPEC §5)."""
    row = await conn.fetchrow(_LOCK, user_id)
    if row is None:
        raise account_not_found(user_id)
    return await touch(conn, Account.from_row(row), now)


async def lock_many(conn: Connection, user_ids: list[str]) -> dict[str, Account]:
    """Lock several accounts at once, in user_id order (the order every batch uses)."""
    rows = await conn.fetch(_LOCK_MANY, sorted(set(user_ids)))
    return {r["user_id"]: Account.from_row(r) for r in rows}


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
    conn: Connection, user_id: str, now: dt.datetime, trial_micros: int
) -> tuple[Account, bool]:
    """Create the account with its trial lot on the first call; return (account, created)."""
    row = await conn.fetchrow(_CREATE, user_id, now)
    if row is None:
        return await lock(conn, user_id, now), False
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
    return account, True


async def create_without_trial(conn: Connection, user_id: str, now: dt.datetime) -> Account:
    """Lock the account, creating it bare if needed (grants and purchases for new users)."""
    row = await conn.fetchrow(_CREATE, user_id, now)
    if row is not None:
        return Account.from_row(row)
    return await lock(conn, user_id, now)


def account_not_found(user_id: str) -> errors.LedgerError:
    return errors.not_found("ACCOUNT_NOT_FOUND", "no account for user_id", user_id=user_id)
