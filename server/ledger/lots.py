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

from creditwallet.core import limits
from creditwallet.server.db import Connection
from creditwallet.server.ledger import carry, history
from creditwallet.server.ledger.types import Account

# Burn-down order: the lowest priority first, then the soonest expiry (never-expiring last),
# then the oldest grant. Every lot without an explicit priority has the default, so by
# default the order is expiry, then age. The burn-down of debits and lots.consume (cw_take,
# migration 0016) spells it in SQL; holds, captures, reversals (in reverse) and the balance's
# list of lots use it from here (tests/ledger/test_debit_sets.py checks the two agree).
BURN_DOWN_ORDER = "priority, expires_at ASC NULLS LAST, granted_at, lot_id"
REVERSE_ORDER = "priority DESC, expires_at DESC NULLS FIRST, granted_at DESC, lot_id DESC"


def ordered(alias: str, order: str = BURN_DOWN_ORDER) -> str:
    """The burn-down order on the lots' columns under a table alias."""
    return ", ".join(f"{alias}.{term.strip()}" for term in order.split(","))


# The burn-down itself is the database function cw_take (migration 0016): (lot_id, amount) of
# each live lot that applies to the spend's agent, in BURN_DOWN_ORDER, at most the amount in
# all. A lot with no agent_ids applies to anything; a restricted lot only to the agents it
# names; a spend for no agent (NULL: a debit that names none, the payment of debt) burns
# unrestricted lots only. The account lock serializes writers, so the live lots need no row
# locks. lots.consume here and every debit (cw_debit_many) use it.
_CONSUME = """
WITH take AS (SELECT t.lot_id, t.amount FROM cw_take($1, $2, $3, $4) t)
UPDATE credit_lots l SET remaining_micros = l.remaining_micros - take.amount
FROM take WHERE l.user_id = $1 AND l.lot_id = take.lot_id
RETURNING l.lot_id, take.amount
"""

# Everything the live lots that apply to an agent ($3; NULL: unrestricted lots only) hold:
# the burn-down of an amount no account can reach.
_TAKE_ALL = 2**63 - 1
_APPLICABLE = "SELECT coalesce(sum(t.amount), 0)::bigint FROM cw_take($1, $4, $2, $3) t"

# Overdrafts not paid yet, oldest first: the first debt that later credits pay.
_UNPAID_OVERDRAFTS = """
SELECT transaction_id, amount_micros - paid_micros - reversed_micros AS unpaid
FROM debit_overdrafts
WHERE user_id = $1 AND paid_micros + reversed_micros < amount_micros
ORDER BY transaction_id
"""

# A payment of an overdraft is a consumption of the debit, from the lot that paid it.
_PAY_OVERDRAFTS = """
WITH paid AS (
    SELECT p.transaction_id, p.lot_id, sum(p.amount)::bigint AS amount
    FROM unnest($2::bigint[], $3::bigint[], $4::bigint[]) AS p(transaction_id, lot_id, amount)
    GROUP BY p.transaction_id, p.lot_id
), consumed AS (
    INSERT INTO lot_consumptions (user_id, transaction_id, lot_id, amount_micros)
    SELECT $1, transaction_id, lot_id, amount FROM paid
    ON CONFLICT (user_id, transaction_id, lot_id) DO UPDATE
    SET amount_micros = lot_consumptions.amount_micros + EXCLUDED.amount_micros
)
UPDATE debit_overdrafts o SET paid_micros = o.paid_micros + t.amount
FROM (SELECT transaction_id, sum(amount)::bigint AS amount FROM paid GROUP BY 1) t
WHERE o.user_id = $1 AND o.transaction_id = t.transaction_id
"""

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

_GRANT = f"""
WITH lot AS (
    INSERT INTO credit_lots (user_id, source, amount_micros, remaining_micros, granted_at,
                             expires_at, transaction_id, grant_key, priority, agent_ids)
    VALUES ($1, $2, $3::bigint, $3::bigint - $4::bigint, $5, $6, $7, $8, $9, $10::text[])
    RETURNING lot_id
)
UPDATE credits SET balance_micros = balance_micros + $3::bigint,
    debt_micros = debt_micros - $4::bigint,
    restricted_lots = restricted_lots OR cardinality($10::text[]) > 0,
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
SELECT hl.lot_id, h.expires_at AS released_at, sum(hl.amount_micros)::bigint AS amount
FROM hold_lots hl JOIN holds h ON h.user_id = hl.user_id AND h.hold_id = hl.hold_id
WHERE hl.user_id = $1 AND hl.hold_id = ANY($2::uuid[]) GROUP BY hl.lot_id, h.expires_at
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
    conn: Connection,
    user_id: str,
    amount_micros: int,
    now: dt.datetime,
    agent_id: str | None = None,
) -> list[tuple[int, int]]:
    """Take amount from the live lots that apply to ``agent_id``, in burn-down order; return
    [(lot_id, amount)].

    The caller has checked that those lots cover the amount; this re-checks, since a short
    take would silently lose the difference.
    """
    rows = await conn.fetch(_CONSUME, user_id, amount_micros, now, agent_id)
    taken = [(r["lot_id"], r["amount"]) for r in rows]
    if sum(a for _, a in taken) != amount_micros:
        raise AssertionError(f"lots of {user_id} do not cover {amount_micros}: {taken}")
    return taken


async def applicable_micros(
    conn: Connection, account: Account, agent_id: str | None, now: dt.datetime
) -> int:
    """What the live lots that apply to a spend for ``agent_id`` hold, for an account its
    writer has locked and touched at ``now``. An account never granted a restricted lot
    needs no look at its lots: every lot applies, and they hold balance - held + debt."""
    if not account.restricted_lots:
        return account.live_micros
    value = await conn.fetchval(_APPLICABLE, account.user_id, now, agent_id, _TAKE_ALL)
    assert isinstance(value, int)
    return value


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
            account = await _expire_due(conn, account, now, since=now)
        account = await carry.enforce(conn, account, now)
    return await settle_debt(conn, account, now)


async def settle_debt(conn: Connection, account: Account, now: dt.datetime) -> Account:
    """Pay recorded debt from live unrestricted credits, as a new grant would.

    Debt is the account's, not an agent's: a lot restricted to some agents pays only for
    their use, never debt (not even an overdraft one of those agents' debits), so restricted
    credits never turn into credits for anything. Overdrafts are paid first, oldest first.
    """
    if account.debt_micros == 0:
        return account
    live = await conn.fetchval(_APPLICABLE, account.user_id, now, None, _TAKE_ALL)
    paid = min(account.debt_micros, live or 0)
    if paid == 0:
        return account
    portions = await consume(conn, account.user_id, paid, now, None)
    await pay_overdrafts(conn, account.user_id, portions)
    row = await conn.fetchrow(_SETTLE_DEBT, account.user_id, paid, now)
    assert row is not None
    return Account.from_row(row)


async def pay_overdrafts(
    conn: Connection, user_id: str, portions: Sequence[tuple[int, int]]
) -> None:
    """Record which lots paid debt, as consumptions of the overdrawn debits (oldest first).
    Debt beyond the unpaid overdrafts is a refund's, which records nothing more."""
    if not portions:
        return
    unpaid = [
        (r["transaction_id"], r["unpaid"]) for r in await conn.fetch(_UNPAID_OVERDRAFTS, user_id)
    ]
    if not unpaid:
        return
    txs: list[int] = []
    lot_ids: list[int] = []
    amounts: list[int] = []
    pending = [list(p) for p in portions]
    for tx_id, owed in unpaid:
        while owed and pending:
            lot_id, left = pending[0]
            take = min(owed, left)
            txs.append(tx_id)
            lot_ids.append(lot_id)
            amounts.append(take)
            owed -= take
            pending[0][1] -= take
            if pending[0][1] == 0:
                pending.pop(0)
        if not pending:
            break
    await conn.execute(_PAY_OVERDRAFTS, user_id, txs, lot_ids, amounts)


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
    priority: int = limits.LOT_PRIORITY_DEFAULT,
    agent_ids: Sequence[str] = (),
) -> Granted:
    """Add a lot; an unrestricted one pays off recorded debt first. A lot granted already
    expired (a paid period recorded late, say) is granted and expired in the same write, both
    in the history, and pays no debt: expired credits are never spendable, not even on debt.
    A restricted lot pays no debt either (``settle_debt``)."""
    born_expired = expires_at is not None and expires_at <= now
    pays_debt = not born_expired and not agent_ids
    paid_debt = min(account.debt_micros, amount_micros) if pays_debt else 0
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
        priority,
        list(agent_ids),
    )
    assert row is not None
    granted = Account.from_row(row)
    if paid_debt:
        await pay_overdrafts(conn, account.user_id, [(row["lot_id"], paid_debt)])
    if born_expired:
        granted = await _expire_due(conn, granted, now, since=now)
    return Granted(tx_id, row["lot_id"], granted)


async def sweep(conn: Connection, account: Account, now: dt.datetime) -> Account:
    """Release expired holds and record the expiry of lots past their expires_at.

    The holds' credits go back to their lots first; a lot's expiry then records what it
    holds. Each expire row says in its metadata when its credits really stopped being
    spendable (``expired_at``), however late the sweep that recorded it ran: the lot's expiry,
    except for what a hold gave back to it after that, which was held until the hold's own
    expiry and gets a row of its own dated then. So a balance as of a past moment is exact.
    """
    user_id = account.user_id
    holds = await conn.fetch(_EXPIRED_HOLDS, user_id, now)
    returns: dict[int, list[tuple[dt.datetime, int]]] = {}
    if holds:
        released = sum(h["amount_micros"] for h in holds)
        portions = await conn.fetch(_HOLD_PORTIONS, user_id, [h["hold_id"] for h in holds])
        row = await conn.fetchrow(_RELEASE_HELD, user_id, released, now)
        assert row is not None
        for p in portions:
            returns.setdefault(p["lot_id"], []).append((p["released_at"], p["amount"]))
        # One amount per lot: an UPDATE ... FROM joins each lot once.
        per_lot = {lot_id: sum(a for _, a in back) for lot_id, back in returns.items()}
        await conn.execute(_RESTORE, user_id, list(per_lot), list(per_lot.values()), now)
        account = await carry.enforce(conn, Account.from_row(row), now)
    account = await _expire_due(conn, account, now, returns=returns)
    return await settle_debt(conn, account, now) if holds else account


async def _expire_due(
    conn: Connection,
    account: Account,
    now: dt.datetime,
    *,
    since: dt.datetime | None = None,
    returns: Mapping[int, Sequence[tuple[dt.datetime, int]]] | None = None,
) -> Account:
    """Record the ``expire`` rows of every lot past its expires_at that still holds credits.

    ``expired_at`` in each row's metadata is when its credits stopped being spendable: the
    lot's expiry, or ``since`` if they all came into the lot later (given back at ``since``);
    ``returns`` are the (moment, amount) that expired holds gave back to each lot, which
    expire at the later of that moment and the lot's expiry."""
    user_id = account.user_id
    expired = await conn.fetch(_EXPIRE_LOTS, user_id, now)
    balance = account.balance_micros
    last_tx: int | None = None
    for lot in sorted(expired, key=lambda r: (r["expires_at"], r["lot_id"])):
        ends = lot["expires_at"] if since is None else max(lot["expires_at"], since)
        late = sorted(
            (at, amount) for at, amount in (returns or {}).get(lot["lot_id"], ()) if at > ends
        )
        parts = [(ends, lot["remaining_micros"] - sum(a for _, a in late)), *late]
        for at, amount in parts:
            if amount <= 0:
                continue
            balance -= amount
            last_tx = await history.append(
                conn,
                user_id,
                "expire",
                -amount,
                balance,
                now,
                source=lot["source"],
                metadata={"lot_id": str(lot["lot_id"]), "expired_at": at.isoformat()},
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
