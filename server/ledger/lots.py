"""Lots: the one primitive that holds credits. Grant, consume, give back, expire.

Balance bookkeeping, always true after each function here:
    credits.balance_micros = sum(lot.remaining) + held_micros - debt_micros
                           = sum of the account's credit_transactions amounts.
Callers hold the account lock (``accounts.lock``) and pass the write's ``now`` from it.

Expiry is exact: a lot is spendable strictly before its ``expires_at``. Every write records the
account's due expiries first (``sweep``), and credits that come back to a lot that has expired
meanwhile (a void, an expired hold, the unspent part of a capture, a reversal) are expired in
the same write (``give_back``): they are never left spendable, and the reply's figures are
what the next read shows.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence

from creditwallet.server.db import Connection
from creditwallet.server.ledger import carry, history
from creditwallet.server.ledger.types import Account

# Burn-down order: soonest expiry first, never-expiring last, then oldest grant.
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

# Credits back into the lots they came from; a lot that will expire moves next_expiry_at
# down. Returns the new next_expiry_at, and whether any of the lots has expired by now (then
# ``give_back`` expires what came back to it).
_RESTORE = """
WITH restored AS (
    UPDATE credit_lots l SET remaining_micros = l.remaining_micros + g.amount
    FROM unnest($2::bigint[], $3::bigint[]) AS g(lot_id, amount)
    WHERE l.user_id = $1 AND l.lot_id = g.lot_id
    RETURNING l.expires_at
), moved AS (
    UPDATE credits SET next_expiry_at = LEAST(next_expiry_at,
                                              (SELECT min(expires_at) FROM restored))
    WHERE user_id = $1
    RETURNING next_expiry_at
)
SELECT (SELECT next_expiry_at FROM moved) AS next_expiry_at,
       coalesce(bool_or(expires_at <= $4), false) AS expired
FROM restored
"""

# Debt is paid from live credits as soon as there are any: lots shrink, debt shrinks by the
# same amount, the balance does not move.
_SETTLE_DEBT = f"""
UPDATE credits SET debt_micros = debt_micros - $2, updated_at = $3 WHERE user_id = $1
RETURNING {Account.COLUMNS}
"""

_LIVE_TOTAL = """
SELECT coalesce(sum(remaining_micros), 0)::bigint FROM credit_lots
WHERE user_id = $1 AND remaining_micros > 0 AND (expires_at IS NULL OR expires_at > $2)
"""

_GRANT = f"""
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
    updated_at = $5, last_transaction_id = $7
WHERE user_id = $1
RETURNING (SELECT lot_id FROM lot), {Account.COLUMNS}
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

_RELEASE_HELD = f"""
UPDATE credits SET held_micros = held_micros - $2, updated_at = $3 WHERE user_id = $1
RETURNING {Account.COLUMNS}
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

# The account's time moves only when something was recorded ($5, the newest expire row): a
# sweep that found nothing due only corrects next_expiry_at, a lower bound.
_AFTER_EXPIRY = f"""
UPDATE credits SET balance_micros = balance_micros - $2, next_expiry_at = $3,
    updated_at = CASE WHEN $5::bigint IS NULL THEN updated_at ELSE $4 END,
    last_transaction_id = coalesce($5, last_transaction_id)
WHERE user_id = $1
RETURNING {Account.COLUMNS}
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


async def give_back(
    conn: Connection, account: Account, portions: Sequence[tuple[int, int]], now: dt.datetime
) -> Account:
    """Give amounts back to the lots they came from (a void, an expired hold, the unspent part
    of a capture, a reversal), after the caller's own bookkeeping of ``account``.

    What lands in a lot that has expired by ``now`` expires in this same write, so does what
    would take a carried subscription lot above its carry-over cap (``carry``), and recorded
    debt is paid from what came back: otherwise a refund could be owed twice, once as debt
    and once as the later expiry of the very credits that came back.
    """
    if portions:
        restored = await conn.fetchrow(
            _RESTORE, account.user_id, [p[0] for p in portions], [p[1] for p in portions], now
        )
        assert restored is not None
        account = dataclasses.replace(account, next_expiry_at=restored["next_expiry_at"])
        if restored["expired"]:
            account = await _expire_due(conn, account, now)
        account = await carry.enforce(conn, account, now)
    return await settle_debt(conn, account, now)


async def settle_debt(conn: Connection, account: Account, now: dt.datetime) -> Account:
    """Pay recorded debt from live credits, as a new grant would."""
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
    """Add a lot; it pays off recorded debt first. A lot granted already expired (a paid
    period recorded late, say) is granted and expired in the same write, both in the history,
    and pays no debt: expired credits are never spendable, not even on debt."""
    born_expired = expires_at is not None and expires_at <= now
    paid_debt = 0 if born_expired else min(account.debt_micros, amount_micros)
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
    granted = Account.from_row(row)
    if born_expired:
        granted = await _expire_due(conn, granted, now)
    return Granted(tx_id, row["lot_id"], granted)


async def sweep(conn: Connection, account: Account, now: dt.datetime) -> Account:
    """Release expired holds and record the expiry of lots past their expires_at."""
    user_id = account.user_id
    holds = await conn.fetch(_EXPIRED_HOLDS, user_id, now)
    if holds:
        released = sum(h["amount_micros"] for h in holds)
        portions = await conn.fetch(_HOLD_PORTIONS, user_id, [h["hold_id"] for h in holds])
        row = await conn.fetchrow(_RELEASE_HELD, user_id, released, now)
        assert row is not None
        await conn.execute(
            _RESTORE, user_id, [p["lot_id"] for p in portions], [p["amount"] for p in portions], now
        )
        account = await carry.enforce(conn, Account.from_row(row), now)
    account = await _expire_due(conn, account, now)
    return await settle_debt(conn, account, now) if holds else account


async def _expire_due(conn: Connection, account: Account, now: dt.datetime) -> Account:
    """Record one ``expire`` row per lot past its expires_at that still holds credits."""
    user_id = account.user_id
    expired = await conn.fetch(_EXPIRE_LOTS, user_id, now)
    balance = account.balance_micros
    last_tx: int | None = None
    for lot in sorted(expired, key=lambda r: (r["expires_at"], r["lot_id"])):
        balance -= lot["remaining_micros"]
        last_tx = await history.append(
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
        _AFTER_EXPIRY, user_id, account.balance_micros - balance, next_expiry, now, last_tx
    )
    assert row is not None
    after = Account.from_row(row)
    if after.balance_micros != balance:
        raise AssertionError(f"{user_id}: expiry from a stale account ({after} vs {balance})")
    return after


async def expire_portion(
    conn: Connection,
    account: Account,
    lot_id: int,
    source: str,
    amount_micros: int,
    now: dt.datetime,
    reason: str,
) -> Account:
    """Expire part of a live lot now (the subscription carry-over cap)."""
    await conn.execute(
        "UPDATE credit_lots SET remaining_micros = remaining_micros - $3 "
        "WHERE user_id = $1 AND lot_id = $2",
        account.user_id,
        lot_id,
        amount_micros,
    )
    balance = account.balance_micros - amount_micros
    tx_id = await history.append(
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
        _AFTER_EXPIRY, account.user_id, amount_micros, account.next_expiry_at, now, tx_id
    )
    assert row is not None
    return Account.from_row(row)
