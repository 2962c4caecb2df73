"""The debit itself: all or nothing, never overdrawing, lots burnt down in order.

Every refusal is decided before the first write of the debit itself (the only earlier writes
are due expiries, which are true whether the debit goes on or not), so no savepoint is needed
around it: a refused debit of a batch leaves its batch-mates alone.

The route of a Debit RPC: ``services/wallet.py: Debit`` (validate) → ``ledger/batching.py``
(one transaction for the batch: claim the request_ids, lock the accounts and take the time,
then this module for each debit, then store the results) → ``convert`` (the reply). A lone
debit is a batch of one.

Once the account is locked, a debit is one statement: it burns the lots down, writes the
history row and its lot consumptions, moves the balance, counts the day's activity and reads
the streak state. The streak bookkeeping follows on the day's first debit only, in one more
statement (two when it grants a milestone).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Mapping

from creditwallet.server import errors
from creditwallet.server.db import Connection
from creditwallet.server.ledger import lots, members, pricing, streaks
from creditwallet.server.ledger.types import Account, Balances

# The burn-down of lots.consume, fused with the history row, the consumption records, the
# balance and the day's activity, so a debit is one round trip once the account is locked.
# $6 the agent the debit is recorded for is also the one its lots must apply to; $12 the
# member; $13 the overdraft (the part no lot pays, taken as debt), $14 the limit it was taken
# under, $15 the debt after it.
_DEBIT = (
    "WITH"
    + lots.burn_down_ctes("$6")
    + f""", burnt AS (
    UPDATE credit_lots l SET remaining_micros = l.remaining_micros - take.amount
    FROM take WHERE l.user_id = $1 AND l.lot_id = take.lot_id
    RETURNING l.lot_id, take.amount
), tx AS (
    INSERT INTO credit_transactions (user_id, type, amount_micros, balance_after_micros,
        request_id, agent_id, quantity, session_id, hold_id, metadata, created_at, member_id)
    VALUES ($1, 'debit', -$2::bigint, $4, $5, $6, $7, $8, $9, $10::jsonb, $3, $12)
    RETURNING transaction_id
), consumed AS (
    INSERT INTO lot_consumptions (user_id, transaction_id, lot_id, amount_micros)
    SELECT $1, tx.transaction_id, burnt.lot_id, burnt.amount FROM tx, burnt
    RETURNING amount_micros
), overdraft AS (
    INSERT INTO debit_overdrafts (user_id, transaction_id, amount_micros, limit_micros,
                                  debt_after_micros)
    SELECT $1, tx.transaction_id, $13::bigint, $14::bigint, $15::bigint FROM tx
    WHERE $13::bigint > 0
), account AS (
    UPDATE credits SET balance_micros = $4, updated_at = $3, debt_micros = debt_micros + $13,
        last_transaction_id = (SELECT transaction_id FROM tx)
    WHERE user_id = $1
    RETURNING {Account.COLUMNS}
), activity AS (
    INSERT INTO user_activity (user_id, day, debit_count) VALUES ($1, $11, 1)
    ON CONFLICT (user_id, day) DO UPDATE SET debit_count = user_activity.debit_count + 1
    RETURNING (xmax = 0) AS first_today
)
SELECT (SELECT transaction_id FROM tx) AS transaction_id,
       (SELECT coalesce(sum(amount), 0) FROM burnt)::bigint AS burnt_micros,
       (SELECT first_today FROM activity) AS first_today,
       account.*,
       s.current_days AS streak_current_days, s.streak_start AS streak_streak_start,
       s.last_active_day AS streak_last_active_day, s.longest_days AS streak_longest_days,
       s.grace_day AS streak_grace_day
FROM account LEFT JOIN streaks s ON s.user_id = account.user_id
"""
)


@dataclasses.dataclass(frozen=True)
class DebitCommand:
    user_id: str
    request_id: str
    amount_micros: int | None
    agent_id: str | None
    quantity: int | None
    session_id: str
    metadata: Mapping[str, str]
    # The agent an explicit amount pays for, so lots restricted to it apply (None: none).
    for_agent_id: str | None = dataclasses.field(default=None, kw_only=True)
    # The member of a team wallet that spends (``members``); None for the account itself.
    member_id: str | None = dataclasses.field(default=None, kw_only=True)

    @property
    def spent_for(self) -> str | None:
        """The agent whose lots apply: the priced agent, or the one an amount names."""
        return self.agent_id if self.agent_id is not None else self.for_agent_id


@dataclasses.dataclass(frozen=True)
class DebitResult:
    transaction_id: int
    charged_micros: int
    balances: Balances
    reward: streaks.Reward | None


async def debit_locked(
    conn: Connection, cmd: DebitCommand, account: Account, now: dt.datetime
) -> tuple[DebitResult, Account]:
    """The debit of an account the caller has locked and touched at ``now``
    (``accounts.lock`` / ``lock_many``); returns the result and the account after it."""
    amount = await cost_of(conn, cmd.amount_micros, cmd.agent_id, cmd.quantity)
    agent = cmd.spent_for
    check_not_in_debt(account)
    applicable = await lots.applicable_micros(conn, account, agent, now)
    overdraft = overdraft_of(account, applicable, amount)
    if cmd.member_id is not None:
        await members.check_room(conn, cmd.user_id, cmd.member_id, amount, now)
    row = await conn.fetchrow(
        _DEBIT,
        cmd.user_id,
        amount,
        now,
        account.balance_micros - amount,
        cmd.request_id,
        agent,
        cmd.quantity if cmd.agent_id is not None else None,
        cmd.session_id or None,
        None,
        json.dumps(dict(cmd.metadata), sort_keys=True) if cmd.metadata else None,
        streaks.utc_day(now),
        cmd.member_id,
        overdraft,
        account.overdraft_limit_micros,
        account.debt_micros + overdraft,
    )
    assert row is not None
    if row["burnt_micros"] != amount - overdraft:
        raise AssertionError(f"debit of {amount} burnt {row['burnt_micros']} from the lots")
    reward, account = await streaks.record_debit(
        conn, Account.from_row(row), now, row["first_today"], streaks.state_from(row, "streak_")
    )
    return DebitResult(row["transaction_id"], amount, Balances.of(account), reward), account


async def cost_of(
    conn: Connection, amount_micros: int | None, agent_id: str | None, quantity: int | None
) -> int:
    if agent_id is not None:
        return await pricing.cost(conn, agent_id, quantity or 1)
    assert amount_micros is not None
    return amount_micros


def check_not_in_debt(account: Account) -> None:
    """Refuse before any write an account whose debt is beyond its overdraft limit (with no
    limit, any debt: what a refund left unpaid blocks debits until credits pay it off)."""
    if account.debt_micros > account.overdraft_limit_micros:
        raise errors.precondition(
            "ACCOUNT_IN_DEBT",
            "the account owes credits after a refund; a grant must pay it off first",
            debt_micros=str(account.debt_micros),
        )


def overdraft_of(account: Account, applicable_micros: int, amount_micros: int) -> int:
    """The part of a debit no applicable lot pays, which the overdraft limit must cover as
    debt (0 when the lots cover it); refuse before any write when it cannot."""
    overdraft = max(0, amount_micros - applicable_micros)
    if overdraft and account.debt_micros + overdraft > account.overdraft_limit_micros:
        raise insufficient(account, applicable_micros, amount_micros)
    return overdraft


def check_reservable(account: Account, applicable_micros: int, amount_micros: int) -> None:
    """A hold reserves credits that exist: it never overdraws, whatever the limit."""
    if applicable_micros < amount_micros:
        raise insufficient(account, applicable_micros, amount_micros, overdraft=False)


def insufficient(
    account: Account, applicable_micros: int, amount_micros: int, *, overdraft: bool = True
) -> errors.LedgerError:
    """INSUFFICIENT_CREDITS with the credits available for the spend's agent: what its
    applicable lots hold less the debt (the account's available figure when every lot
    applies), and the overdraft left when the account has a limit."""
    extra: dict[str, str] = {}
    if overdraft and account.overdraft_limit_micros:
        extra["overdraft_left_micros"] = str(
            max(0, account.overdraft_limit_micros - account.debt_micros)
        )
    return errors.insufficient_credits(
        applicable_micros - account.debt_micros, amount_micros, **extra
    )
