"""GetBalance: available, held, debt and the live lots, exact at read time.

A read never waits for a sweeper and never fails because time moved. It reads one snapshot;
if the account has an expiry due by then, it instead locks the account, records the due
expiries and answers from under that same lock, so the figures it returns are the ones the
ledger holds, whatever expired meanwhile.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from creditwallet.server import db
from creditwallet.server.clock import Clock
from creditwallet.server.db import Connection, Pool
from creditwallet.server.ledger import accounts, streaks, subscriptions
from creditwallet.server.ledger.types import Account, Lot, Subscription

_LIVE_LOTS = f"""
SELECT {Lot.COLUMNS}
FROM credit_lots
WHERE user_id = $1 AND remaining_micros > 0 AND (expires_at IS NULL OR expires_at > $2)
ORDER BY expires_at ASC NULLS LAST, granted_at, lot_id
"""


@dataclasses.dataclass(frozen=True)
class BalanceView:
    account: Account
    lots: list[Lot]  # live lots, in burn-down order
    subscription: Subscription | None
    streak: streaks.View


async def balance(pool: Pool, clock: Clock, user_id: str) -> BalanceView:
    async def snapshot(conn: Connection) -> BalanceView | None:
        account = await accounts.read(conn, user_id)
        now = accounts.ledger_time(clock, account)
        return None if account.sweep_due(now) else await _view(conn, account, now)

    view = await db.read(pool, snapshot, snapshot=True)
    if view is not None:
        return view

    async def sweep_and_read(conn: Connection) -> BalanceView:
        locked = await accounts.lock(conn, user_id, clock)
        return await _view(conn, locked.account, locked.now)

    return await db.run_transaction(pool, sweep_and_read)


async def live_lots(conn: Connection, user_id: str, now: dt.datetime) -> list[Lot]:
    return [Lot.from_row(r) for r in await conn.fetch(_LIVE_LOTS, user_id, now)]


async def _view(conn: Connection, account: Account, now: dt.datetime) -> BalanceView:
    return BalanceView(
        account=account,
        lots=await live_lots(conn, account.user_id, now),
        subscription=await subscriptions.for_user(conn, account.user_id),
        streak=await streaks.read(conn, account.user_id, now),
    )
