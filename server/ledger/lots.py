"""Lots: the one primitive that holds credits. Grant, consume, give back, expire.

Balance bookkeeping, always true after each function here (SPEC §12.1):
    credits.balance_micros = sum(lot.remaining) + held_micros - debt_micros
                           = sum of the account's credit_transactions amounts.
Callers hold the account lock (``accounts.lock``) before calling anything here.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence

from creditwallet.server.db import Connection
from creditwallet.server.ledger import history
from creditwallet.server.ledger.types import Account

# Burn-down order (SPEC §5): soonest expiry first, never-expiring last, then oldest grant.
# $1 user_id, $2 amount, $3 now; ``take`` is (lot_id, amount) of each lot to draw on. The
# account lock serializes writers, so the live lots need no row locks here. Shared by
# ``consume`` and the debit's fused statement (ledger/debit.py).
BURN_DOWN_CTES = """
live AS (
    SELECT lot_id, remaining_micros,
           (sum(remaining_micros) OVER (
               ORDER BY expires_at ASC NULLS LAST, granted_at, lot_id))::bigint AS upto
    FROM credit_lots
    WHERE user_id = $1 AND remaining_micros > 0 AND (expires_at IS NULL OR expires_at > $3)
), take AS (
    SELECT lot_id, LEAST(remaining_micros, $2::bigint - (upto - remaining_micros)) AS amount
    FROM live WHERE upto - remaining_micros < $2
)"""

_CONSUME = (
    "WITH"
    + BURN_DOWN_CTES
    + """
UPDATE credit_lots l SET remaining_micros = l.remaining_micros - take.amount
FROM take WHERE l.user_id = $1 AND l.lot_id = take.lot_id
RETURNING l.lot_id, take.amount
"""
)

# Given-back credits may land in a lot that has expired meanwhile: the account's
# next_expiry_at moves down so the next touch records that expiry.
_RESTORE = """
WITH restored AS (
    UPDATE credit_lots l SET remaining_micros = l.remaining_micros + g.amount
    FROM unnest($2::bigint[], $3::bigint[]) AS g(lot_id, amount)
    WHERE l.user_id = $1 AND l.lot_id = g.lot_id
    RETURNING l.expires_at
)
UPDATE credits SET next_expiry_at = LEAST(next_expiry_at, (SELECT min(expires_at) FROM restored))
WHERE user_id = $1
"""

# Debt is paid from live credits as soon as there are any: lots shrink, debt shrinks by the
# same amount, the balance does not move.
_SETTLE_DEBT = """
UPDATE credits SET debt_micros = debt_micros - $2, updated_at = $3 WHERE user_id = $1
RETURNING user_id, balance_micros, held_micros, debt_micros, next_expiry_at, created_at
"""

_LIVE_TOTAL = """
SELECT coalesce(sum(remaining_micros), 0)::bigint FROM credit_lots
WHERE user_id = $1 AND remaining_micros > 0 AND (expires_at IS NULL OR expires_at > $2)
"""

_GRANT = """
WITH lot AS (
    INSERT INTO credit_lots (user_id, source, amount_micros, remaining_micros, granted_at,
                             expires_at, transaction_id, grant_key)
    VALUES ($1, $2, $3::bigint, $3::bigint - $4::bigint, $5, $6, $7, $8)
    RETURNING lot_id
)
UPDATE credits SET balance_micros = balance_micros + $3::bigint,
    debt_micros = debt_micros - $4::bigint,
    next_expiry_at = CASE WHEN $6::timestamptz IS NULL OR $3::bigint = $4::bigint
                          THEN next_expiry_at ELSE LEAST(next_expiry_at, $6::timestamptz) END,
    updated_at = $5
WHERE user_id = $1
RETURNING (SELECT lot_id FROM lot), user_id, balance_micros, held_micros, debt_micros,
          next_expiry_at, created_at
"""

_EXPIRED_HOLDS = """
UPDATE holds SET status = 'expired', finalized_at = $2
WHERE user_id = $1 AND status = 'pending' AND expires_at <= $2
RETURNING hold_id, amount_micros
"""

_HOLD_PORTIONS = """
SELECT lot_id, sum(amount_micros)::bigint AS amount FROM hold_lots
WHERE user_id = $1 AND hold_id = ANY($2::uuid[]) GROUP BY lot_id
"""

_EXPIRE_LOTS = """
WITH old AS (
    SELECT lot_id, source, remaining_micros, expires_at FROM credit_lots
    WHERE user_id = $1 AND remaining_micros > 0 AND expires_at <= $2
)
UPDATE credit_lots l SET remaining_micros = 0 FROM old
WHERE l.user_id = $1 AND l.lot_id = old.lot_id
RETURNING old.lot_id, old.source, old.remaining_micros, old.expires_at
"""

_NEXT_EXPIRY = """
SELECT LEAST(
    (SELECT min(expires_at) FROM credit_lots
     WHERE user_id = $1 AND remaining_micros > 0 AND expires_at IS NOT NULL),
    (SELECT min(expires_at) FROM holds WHERE user_id = $1 AND status = 'pending'))
"""

_UPDATE_AFTER_SWEEP = """
UPDATE credits SET balance_micros = balance_micros - $2, held_micros = held_micros - $3,
    next_expiry_at = $4, updated_at = $5
WHERE user_id = $1
RETURNING user_id, balance_micros, held_micros, debt_micros, next_expiry_at, created_at
"""


@dataclasses.dataclass(frozen=True)
class Granted:
    transaction_id: int
    lot_id: int
    account: Account


async def consume(
    conn: Connection, user_id: str, amount_micros: int, now: dt.datetime
) -> list[tuple[int, int]]:
    """Take amount from the live lots in burn-down order; return [(lot_id, amount)].

    The caller has checked that the live lots cover the amount; this re-checks, since a
    short take would silently lose the difference.
    """
    rows = await conn.fetch(_CONSUME, user_id, amount_micros, now)
    taken = [(r["lot_id"], r["amount"]) for r in rows]
    if sum(a for _, a in taken) != amount_micros:
        raise AssertionError(f"lots of {user_id} do not cover {amount_micros}: {taken}")
    return taken


async def restore(
    conn: Connection, user_id: str, portions: Sequence[tuple[int, int]], now: dt.datetime
) -> None:
    """Give amounts back to the lots they came from (void, expiry of a hold, reversal).

    Callers finish their own bookkeeping (held, balance) and then call ``settle_debt``.
    """
    if portions:
        await conn.execute(_RESTORE, user_id, [p[0] for p in portions], [p[1] for p in portions])


async def settle_debt(conn: Connection, account: Account, now: dt.datetime) -> Account:
    """Pay recorded debt from live credits, as a new grant would.

    Credits that come back (a void, an expired hold, a reversal) while the account owes
    debt must pay it: otherwise a refund could be owed twice, once as debt and once as
    the later expiry of the very credits that came back.
    """
    if account.debt_micros == 0:
        return account
    live = await conn.fetchval(_LIVE_TOTAL, account.user_id, now)
    paid = min(account.debt_micros, live or 0)
    if paid == 0:
        return account
    await consume(conn, account.user_id, paid, now)
    row = await conn.fetchrow(_SETTLE_DEBT, account.user_id, paid, now)
    assert row is not None
    return Account.from_row(row)


async def grant(
    conn: Connection,
    account: Account,
    *,
    source: str,
    amount_micros: int,
    now: dt.datetime,
    expires_at: dt.datetime | None = None,
    request_id: str | None = None,
    metadata: Mapping[str, str] | None = None,
    grant_key: str | None = None,
) -> Granted:
    """Add a lot; it pays off recorded debt first (SPEC §7 refunds)."""
    paid_debt = min(account.debt_micros, amount_micros)
    tx_id = await history.append(
        conn,
        account.user_id,
        "grant",
        amount_micros,
        account.balance_micros + amount_micros,
        now,
        source=source,
        request_id=request_id,
        metadata=metadata,
    )
    row = await conn.fetchrow(
        _GRANT,
        account.user_id,
        source,
        amount_micros,
        paid_debt,
        now,
        expires_at,
        tx_id,
        grant_key,
    )
    assert row is not None
    return Granted(tx_id, row["lot_id"], Account.from_row(row))


async def sweep(conn: Connection, account: Account, now: dt.datetime) -> Account:
    """Release expired holds and record the expiry of lots past their expires_at."""
    user_id = account.user_id
    released = 0
    holds = await conn.fetch(_EXPIRED_HOLDS, user_id, now)
    if holds:
        released = sum(h["amount_micros"] for h in holds)
        portions = await conn.fetch(_HOLD_PORTIONS, user_id, [h["hold_id"] for h in holds])
        await restore(conn, user_id, [(p["lot_id"], p["amount"]) for p in portions], now)
    expired = await conn.fetch(_EXPIRE_LOTS, user_id, now)
    balance = account.balance_micros
    for lot in sorted(expired, key=lambda r: (r["expires_at"], r["lot_id"])):
        balance -= lot["remaining_micros"]
        await history.append(
            conn,
            user_id,
            "expire",
            -lot["remaining_micros"],
            balance,
            now,
            source=lot["source"],
            metadata={"lot_id": str(lot["lot_id"])},
        )
    next_expiry = await conn.fetchval(_NEXT_EXPIRY, user_id)
    row = await conn.fetchrow(
        _UPDATE_AFTER_SWEEP,
        user_id,
        account.balance_micros - balance,
        released,
        next_expiry,
        now,
    )
    assert row is not None
    return await settle_debt(conn, Account.from_row(row), now) if holds else Account.from_row(row)


async def expire_portion(
    conn: Connection,
    account: Account,
    lot_id: int,
    source: str,
    amount_micros: int,
    now: dt.datetime,
    reason: str,
) -> Account:
    """Expire part of a live lot now (the subscription carry-over cap of SPEC §8)."""
    await conn.execute(
        "UPDATE credit_lots SET remaining_micros = remaining_micros - $3 "
        "WHERE user_id = $1 AND lot_id = $2",
        account.user_id,
        lot_id,
        amount_micros,
    )
    balance = account.balance_micros - amount_micros
    await history.append(
        conn,
        account.user_id,
        "expire",
        -amount_micros,
        balance,
        now,
        source=source,
        metadata={"lot_id": str(lot_id), "reason": reason},
    )
    row = await conn.fetchrow(
        _UPDATE_AFTER_SWEEP, account.user_id, amount_micros, 0, account.next_expiry_at, now
    )
    assert row is not None
    return Account.from_row(row)
