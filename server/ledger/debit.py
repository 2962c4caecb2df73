"""The debit itself: all or nothing, never overdrawing, lots burnt down in order.

Every refusal is decided before the first write of the debit itself (the only earlier writes
are due expiries, which are true whether the debit goes on or not), so no savepoint is needed
around it: a refused debit of a batch leaves its batch-mates alone.

The route of a Debit RPC: ``services/wallet.py: Debit`` (validate) → ``ledger/batching.py``
(one transaction for the batch: claim the request_ids, lock the accounts and take the time,
then ``debit_many`` here for all the debits, then store the results) → ``convert`` (the
reply). A lone debit is a batch of one.

Once the accounts are locked, one call of the database function ``cw_debit_many`` (migration
0016) applies all the debits of a batch in order: each is priced, refused or burnt down, and
writes its history row, lot consumptions, overdraft, balance and the day's activity, each
seeing what the previous ones left. The streak bookkeeping follows for the accounts' first
debits of the day, one statement for all of them (more only when one earns a milestone).
The rules a debit is refused by are the same as a hold's (``holds.authorize``, in Python
here); their words are built here for both, from the reason and figures the call returns.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Mapping, Sequence

import asyncpg
from creditwallet.core import limits
from creditwallet.server import errors
from creditwallet.server.db import Connection
from creditwallet.server.ledger import members, pricing, streaks
from creditwallet.server.ledger.accounts import Locked
from creditwallet.server.ledger.types import Account, Balances

# Every debit of a batch, applied in order by one call (migration 0016): each priced, checked
# and, unless refused, burnt down with its history row, consumptions, overdraft, balance and
# activity. One row per debit the call got to (it stops early only after an account's first
# debit of the day that has another debit of the same account behind it, see below).
_DEBIT_MANY = """
SELECT * FROM cw_debit_many($1::text[], $2::text[], $3::bigint[], $4::boolean[], $5::text[],
                            $6::bigint[], $7::text[], $8::text[], $9::text[],
                            $10::timestamptz[], $11::date[], $12::boolean[], $13::bigint)
"""


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


async def debit_many(
    conn: Connection, cmds: Sequence[DebitCommand], locked: Mapping[str, Locked]
) -> list[DebitResult | errors.LedgerError]:
    """Apply debits in the order given, each to an account the caller has locked and touched
    (``accounts.lock_many``), each at its account's time; return each one's result or its
    stored refusal. A refusal is decided before that debit writes anything and leaves the
    others alone. A malformed debit (a price x quantity past the bound) raises: only a
    rollback undoes the claims the caller wrote.

    One database call applies the debits, up to the first account whose first debit of the day
    has another debit of the same account after it in ``cmds``: its streak bookkeeping, here,
    may grant a milestone reward that the next debit can spend, so that one waits for the next
    call. In steady state that is one call per batch; the accounts' first debits of a day cost
    one more statement for the whole batch's streaks.
    """
    out: list[DebitResult | errors.LedgerError] = []
    while len(out) < len(cmds):
        rest = cmds[len(out) :]
        nows = [locked[c.user_id].now for c in rest]
        last = {c.user_id: i for i, c in enumerate(rest)}
        rows = await conn.fetch(
            _DEBIT_MANY,
            [c.user_id for c in rest],
            [c.request_id for c in rest],
            [c.amount_micros if c.agent_id is None else None for c in rest],
            [c.agent_id is not None for c in rest],
            [c.spent_for for c in rest],
            [c.quantity if c.agent_id is not None else None for c in rest],
            [c.session_id or None for c in rest],
            [json.dumps(dict(c.metadata), sort_keys=True) if c.metadata else None for c in rest],
            [c.member_id for c in rest],
            nows,
            [streaks.utc_day(now) for now in nows],
            [last[c.user_id] > i for i, c in enumerate(rest)],
            limits.AMOUNT_MICROS_MAX,
        )
        if not rows:
            raise AssertionError("cw_debit_many applied nothing")
        firsts: list[tuple[int, streaks.FirstDebit]] = []
        for row in rows:
            cmd, now = rest[row["ord"] - 1], nows[row["ord"] - 1]
            account = Account.from_row(row)
            if row["reason"] is not None:
                refusal = _refusal(row, cmd, account, now)
                if not refusal.stored:
                    raise refusal
                out.append(refusal)
                continue
            if row["first_today"]:
                state = streaks.state_from(row, "streak_")
                firsts.append((len(out), streaks.FirstDebit(account, now, state)))
            out.append(
                DebitResult(
                    row["transaction_id"], row["charged_micros"], Balances.of(account), None
                )
            )
        # An account's first debit of the day is its last one in this call (see above), so its
        # reward, if any, is reported by that debit and seen by the account's next one.
        rewards = await streaks.record_first_debits(conn, [first for _, first in firsts])
        for index, first in firsts:
            rewarded = rewards.get(first.account.user_id)
            if rewarded is not None:
                result = out[index]
                assert isinstance(result, DebitResult)
                out[index] = dataclasses.replace(
                    result, reward=rewarded[0], balances=Balances.of(rewarded[1])
                )
    return out


def _refusal(
    row: asyncpg.Record, cmd: DebitCommand, account: Account, now: dt.datetime
) -> errors.LedgerError:
    """The error of a refusal cw_debit_many returned: the same words as every other spend's."""
    reason, charged = row["reason"], row["charged_micros"]
    if reason in ("AGENT_NOT_FOUND", "AGENT_DISABLED"):
        return pricing.refusal(reason, cmd.spent_for or "")
    if reason == "INVALID_ARGUMENT":
        return pricing.too_costly()
    if reason == "ACCOUNT_IN_DEBT":
        return in_debt(account)
    if reason == "INSUFFICIENT_CREDITS":
        return insufficient(account, row["figure_micros"], charged)
    if reason == "MEMBER_NOT_FOUND":
        return members.not_found(cmd.member_id or "")
    if reason == "MEMBER_CAP_EXCEEDED":
        return members.cap_exceeded(
            cmd.member_id or "",
            row["figure_micros"],
            charged,
            row["cap_micros"],
            row["cap_period"],
            now,
        )
    raise AssertionError(f"cw_debit_many returned an unknown refusal {reason}")


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
        raise in_debt(account)


def in_debt(account: Account) -> errors.LedgerError:
    return errors.precondition(
        "ACCOUNT_IN_DEBT",
        "the account owes credits after a refund; a grant must pay it off first",
        debt_micros=str(account.debt_micros),
    )


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
