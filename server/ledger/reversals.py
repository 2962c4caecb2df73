"""ReverseDebit: give a debit's credits back to the lots they came from.

The part of a debit taken on overdraft and not paid yet is reversed first: the reversal
cancels that much debt. The rest goes back to the lots that paid it (a lot that paid the
overdraft later included), a partial reversal to the longest-lived lots first (the reverse of
burn-down),
so the user keeps the credits least likely to expire. Each consumption records how much of
it was reversed, so reversals never exceed the debit, however many there are. Credits given
back to a lot that has expired since the debit expire in the same write (``lots.give_back``):
the reversal row says what came back, the expire row after it what expired.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from creditwallet.server import errors
from creditwallet.server.clock import Clock
from creditwallet.server.db import Connection
from creditwallet.server.ledger import accounts, history, lots
from creditwallet.server.ledger.types import Account, Balances

_DEBIT = "SELECT type FROM credit_transactions WHERE user_id = $1 AND transaction_id = $2"

_CONSUMED = f"""
SELECT c.lot_id, c.amount_micros - c.reversed_micros AS reversible
FROM lot_consumptions c
JOIN credit_lots l ON l.user_id = c.user_id AND l.lot_id = c.lot_id
WHERE c.user_id = $1 AND c.transaction_id = $2 AND c.amount_micros > c.reversed_micros
ORDER BY {lots.ordered("l", lots.REVERSE_ORDER)}
"""

# The part of the debit taken on overdraft that no credits have paid yet.
_UNPAID = """
SELECT amount_micros - paid_micros - reversed_micros FROM debit_overdrafts
WHERE user_id = $1 AND transaction_id = $2
"""

_CANCEL_OVERDRAFT = """
UPDATE debit_overdrafts SET reversed_micros = reversed_micros + $3
WHERE user_id = $1 AND transaction_id = $2
"""

_MARK = """
UPDATE lot_consumptions c SET reversed_micros = c.reversed_micros + g.amount
FROM unnest($3::bigint[], $4::bigint[]) AS g(lot_id, amount)
WHERE c.user_id = $1 AND c.transaction_id = $2 AND c.lot_id = g.lot_id
"""

_ACCOUNT = f"""
UPDATE credits SET balance_micros = balance_micros + $2, updated_at = $3,
    last_transaction_id = $4, debt_micros = debt_micros - $5
WHERE user_id = $1
RETURNING {Account.COLUMNS}
"""


@dataclasses.dataclass(frozen=True)
class ReversalResult:
    transaction_id: int
    reversed_micros: int
    balances: Balances


async def reverse_debit(
    conn: Connection,
    user_id: str,
    debit_id: int,
    amount_micros: int | None,
    request_id: str,
    metadata: Mapping[str, str],
    clock: Clock,
) -> ReversalResult:
    locked = await accounts.lock(conn, user_id, clock)
    account, now = locked.account, locked.now
    if await conn.fetchval(_DEBIT, user_id, debit_id) != "debit":
        raise errors.not_found(
            "TRANSACTION_NOT_FOUND",
            "no debit with that transaction_id",
            transaction_id=str(debit_id),
        )
    consumed = await conn.fetch(_CONSUMED, user_id, debit_id)
    unpaid = await conn.fetchval(_UNPAID, user_id, debit_id) or 0
    reversible = unpaid + sum(c["reversible"] for c in consumed)
    amount = reversible if amount_micros is None else amount_micros
    if reversible == 0 or amount > reversible:
        raise errors.precondition(
            "REVERSAL_EXCEEDS_DEBIT",
            f"{reversible} micros of the debit are left to reverse",
            reversible_micros=str(reversible),
        )
    # The unpaid overdraft first: what the account still owes for the debit is cancelled.
    cancelled = min(amount, unpaid)
    if cancelled:
        await conn.execute(_CANCEL_OVERDRAFT, user_id, debit_id, cancelled)
    portions: list[tuple[int, int]] = []
    left = amount - cancelled
    for c in consumed:
        take = min(left, c["reversible"])
        if take:
            portions.append((c["lot_id"], take))
            left -= take
    await conn.execute(_MARK, user_id, debit_id, [p[0] for p in portions], [p[1] for p in portions])
    tx_id = await history.append(
        conn,
        user_id,
        "reversal",
        amount,
        account.balance_micros + amount,
        now,
        request_id=request_id,
        related_transaction_id=debit_id,
        metadata=metadata,
    )
    row = await conn.fetchrow(_ACCOUNT, user_id, amount, now, tx_id, cancelled)
    assert row is not None
    account = await lots.give_back(conn, Account.from_row(row), portions, now)
    return ReversalResult(tx_id, amount, Balances.of(account))
