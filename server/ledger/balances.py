"""GetBalance: available, held, debt and the live lots, exact at read time or at a past moment.

A read never waits for a sweeper and never fails because time moved. It reads one snapshot;
if the account has an expiry due by then, it instead locks the account, records the due
expiries and answers from under that same lock, so the figures it returns are the ones the
ledger holds, whatever expired meanwhile.

**As of a past moment** (``as_of``), the figures come from what the ledger keeps of the past,
once the account is brought up to date as above:

- the balance: the history row last written at or before the moment records the balance
  after it; less what had expired by then but was recorded later (an expiry is recorded by
  the first write or read after it, and its row's ``expired_at`` says when the credits
  really stopped being spendable);
- held: the holds placed by then and not yet captured, voided or expired (a hold is released
  at its own expiry, however late that was recorded);
- debt: the account's debt history (``debt_history``);
- the lots live then: granted by then and not expired, with what each held then
  (``lot_history``), plus what expired holds had given back to it by then but was recorded
  later.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from creditwallet.server import db, errors
from creditwallet.server.clock import Clock
from creditwallet.server.db import Connection, Pool
from creditwallet.server.ledger import accounts, lots, streaks, subscriptions
from creditwallet.server.ledger.types import Account, Lot, Subscription

_LIVE_LOTS = f"""
SELECT {Lot.COLUMNS}
FROM credit_lots
WHERE user_id = $1 AND remaining_micros > 0 AND (expires_at IS NULL OR expires_at > $2)
ORDER BY {lots.BURN_DOWN_ORDER}
"""

# When an expire row's credits stopped being spendable: its expired_at, else (rows written
# before expired_at was recorded) the lot's expiry, or the row itself for a cap's expiry.
_EXPIRED_AT = """coalesce((x.metadata->>'expired_at')::timestamptz,
    CASE WHEN x.metadata->>'reason' = 'carry_over_cap' THEN x.created_at
         ELSE least(x.created_at, l.expires_at) END)"""

_BALANCE_AT = f"""
SELECT coalesce((SELECT balance_after_micros FROM credit_transactions
                 WHERE user_id = $1 AND created_at <= $2
                 ORDER BY transaction_id DESC LIMIT 1), 0)::bigint AS recorded,
       coalesce((SELECT sum(x.amount_micros) FROM credit_transactions x
                 LEFT JOIN credit_lots l
                     ON l.user_id = x.user_id AND l.lot_id = (x.metadata->>'lot_id')::bigint
                 WHERE x.user_id = $1 AND x.type = 'expire' AND x.created_at > $2
                   AND {_EXPIRED_AT} <= $2), 0)::bigint AS expired_later,
       coalesce((SELECT sum(amount_micros) FROM holds
                 WHERE user_id = $1 AND created_at <= $2
                   AND least(coalesce(finalized_at, 'infinity'::timestamptz), expires_at) > $2
                ), 0)::bigint
           AS held,
       coalesce((SELECT debt_micros FROM debt_history
                 WHERE user_id = $1 AND changed_at <= $2
                 ORDER BY change_id DESC LIMIT 1), 0)::bigint AS debt
"""

# The lots live at $2, each with its remaining then and the expiry in force then: a
# subscription lot's expiry corrected after $2 (an ``expiry_change`` row) had the correction's
# previous value at $2.
_LOTS_AT = f"""
SELECT * FROM (
SELECT l.lot_id, l.source, l.amount_micros, l.granted_at, l.priority, l.agent_ids,
       CASE WHEN moved.found THEN moved.previous ELSE l.expires_at END AS expires_at,
       (h.remaining_micros + coalesce(back.amount, 0))::bigint AS remaining_micros
FROM credit_lots l
LEFT JOIN LATERAL (
    SELECT true AS found, (x.metadata->>'previous_expires_at')::timestamptz AS previous
    FROM credit_transactions x
    WHERE x.user_id = l.user_id AND x.type = 'expiry_change' AND x.created_at > $2
      AND (x.metadata->>'lot_id')::bigint = l.lot_id
    ORDER BY x.transaction_id LIMIT 1
) moved ON true
JOIN LATERAL (
    SELECT remaining_micros FROM lot_history h
    WHERE h.user_id = l.user_id AND h.lot_id = l.lot_id AND h.changed_at <= $2
    ORDER BY h.change_id DESC LIMIT 1
) h ON true
LEFT JOIN LATERAL (
    SELECT sum(hl.amount_micros) AS amount FROM hold_lots hl
    JOIN holds ho ON ho.user_id = hl.user_id AND ho.hold_id = hl.hold_id
    WHERE hl.user_id = l.user_id AND hl.lot_id = l.lot_id AND ho.status = 'expired'
      AND ho.expires_at <= $2 AND ho.finalized_at > $2
) back ON true
WHERE l.user_id = $1 AND l.granted_at <= $2
) lots_then
WHERE expires_at IS NULL OR expires_at > $2
ORDER BY {lots.BURN_DOWN_ORDER}
"""


@dataclasses.dataclass(frozen=True)
class BalanceView:
    account: Account  # its balance, held and debt are those at ``at``
    lots: list[Lot]  # live lots, in burn-down order
    subscription: Subscription | None
    streak: streaks.View | None  # None for a past moment
    at: dt.datetime
    available_for_agent_micros: int | None = None


async def balance(
    pool: Pool,
    clock: Clock,
    user_id: str,
    *,
    agent_id: str | None = None,
    as_of: dt.datetime | None = None,
) -> BalanceView:
    async def snapshot(conn: Connection) -> BalanceView | None:
        account = await accounts.read(conn, user_id)
        now = accounts.ledger_time(clock, account)
        if account.sweep_due(now):
            return None
        return await _view(conn, account, now, agent_id, as_of)

    view = await db.read(pool, snapshot, snapshot=True)
    if view is not None:
        return view

    async def sweep_and_read(conn: Connection) -> BalanceView:
        locked = await accounts.lock(conn, user_id, clock)
        return await _view(conn, locked.account, locked.now, agent_id, as_of)

    return await db.run_transaction(pool, sweep_and_read)


async def live_lots(conn: Connection, user_id: str, now: dt.datetime) -> list[Lot]:
    return [Lot.from_row(r) for r in await conn.fetch(_LIVE_LOTS, user_id, now)]


async def _view(
    conn: Connection,
    account: Account,
    now: dt.datetime,
    agent_id: str | None,
    as_of: dt.datetime | None,
) -> BalanceView:
    if as_of is not None:
        return await _past_view(conn, account, now, agent_id, as_of)
    live = await live_lots(conn, account.user_id, now)
    return BalanceView(
        account=account,
        lots=live,
        subscription=await subscriptions.for_user(conn, account.user_id),
        streak=await streaks.read(conn, account.user_id, now),
        at=now,
        available_for_agent_micros=_for_agent(live, account.debt_micros, agent_id),
    )


async def _past_view(
    conn: Connection, account: Account, now: dt.datetime, agent_id: str | None, at: dt.datetime
) -> BalanceView:
    if at > now:
        raise errors.invalid("as_of", "as_of must not be in the future")
    row = await conn.fetchrow(_BALANCE_AT, account.user_id, at)
    assert row is not None
    past = dataclasses.replace(
        account,
        balance_micros=row["recorded"] + row["expired_later"],
        held_micros=row["held"],
        debt_micros=row["debt"],
    )
    then = [
        Lot.from_row(r)
        for r in await conn.fetch(_LOTS_AT, account.user_id, at)
        if r["remaining_micros"] > 0
    ]
    return BalanceView(
        account=past,
        lots=then,
        subscription=None,
        streak=None,
        at=at,
        available_for_agent_micros=_for_agent(then, past.debt_micros, agent_id),
    )


def _for_agent(live: list[Lot], debt_micros: int, agent_id: str | None) -> int | None:
    """Available for debits for the agent: its applicable lots less the account's debt."""
    if agent_id is None:
        return None
    return sum(lot.remaining_micros for lot in live if lot.applies_to(agent_id)) - debt_micros
