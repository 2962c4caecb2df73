"""Overdraft: how far below zero an account's debits may take its available balance.

A debit whose applicable lots do not cover it takes the rest as debt (``debit_overdrafts``
records how much, under which limit), exactly as a refund's unpaid clawback is debt: later
credits pay it first (``lots.settle_debt``), and debt beyond the limit refuses debits with
ACCOUNT_IN_DEBT. Holds never overdraw (``debit.check_reservable``). The default limit is 0:
no overdraft at all. Every limit set is kept (``overdraft_limit_changes``), so VerifyLedger
can tell that each overdraft stayed within a limit the account really had.
"""

from __future__ import annotations

from creditwallet.server.clock import Clock
from creditwallet.server.db import Connection
from creditwallet.server.ledger import accounts
from creditwallet.server.ledger.types import Account

_SET = f"""
WITH change AS (
    INSERT INTO overdraft_limit_changes (user_id, limit_micros, changed_at) VALUES ($1, $2, $3)
)
UPDATE credits SET overdraft_limit_micros = $2, updated_at = $3
WHERE user_id = $1
RETURNING {Account.COLUMNS}
"""


async def set_limit(conn: Connection, user_id: str, limit_micros: int, clock: Clock) -> Account:
    """Set the limit (a set: the same call twice changes nothing more). Lowering it below the
    current debt refuses further overdrafts until credits pay the debt down; it undoes none."""
    locked = await accounts.lock(conn, user_id, clock)
    if locked.account.overdraft_limit_micros == limit_micros:
        return locked.account
    row = await conn.fetchrow(_SET, user_id, limit_micros, locked.now)
    assert row is not None
    return Account.from_row(row)
