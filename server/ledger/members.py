"""Team wallets: the members of an account, each with a spending cap per UTC day or month.

**Counted exactly, like the balance.** A member's spend is kept per UTC day in
``member_spend`` by the triggers of migration 0014, in the transaction of every debit,
capture, reversal and hold of the member. Every one of those writers holds the account's
``credits`` row lock, so the cap check here (made after that lock, before the debit writes
anything) and the counters it reads change one writer at a time: two debits of one member can
never both see the room that only one of them fits in.

**What counts, and when.** A debit counts on its own UTC day (the ledger's ``now``, taken
after the lock). A hold counts its whole amount from Authorize, on the day it was placed;
Capture replaces that with what it captures, on that same day (so a capture never fails on
the cap, and a hold placed just before midnight counts in the day that allowed it); Void and
expiry give the held amount back. A reversal gives its amount back to the day of the debit
it reverses. A month's spend is the sum of its days.

**Changes.** SetMember replaces the member's cap, period and active flag at once; each change
is also appended to ``member_changes`` with the account's newest history row at that moment,
so VerifyLedger knows the cap in force at every debit. Lowering a cap below what the period
already spent refuses further debits; it undoes nothing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from creditwallet.server import errors
from creditwallet.server.clock import Clock
from creditwallet.server.db import Connection
from creditwallet.server.ledger import accounts

# The member, and what its current period counts so far (spent + held), as of day $3.
_CURRENT = """
SELECT m.user_id, m.member_id, m.cap_micros, m.cap_period, m.active, m.created_at,
       m.updated_at,
       coalesce(sum(s.spent_micros), 0)::bigint AS spent_micros,
       coalesce(sum(s.held_micros), 0)::bigint AS held_micros
FROM account_members m
LEFT JOIN member_spend s ON s.user_id = m.user_id AND s.member_id = m.member_id
    AND s.day <= $3::date
    AND s.day >= CASE m.cap_period WHEN 'day' THEN $3::date
                                   ELSE date_trunc('month', $3::date)::date END
WHERE m.user_id = $1 AND m.member_id = ANY($2::text[])
GROUP BY m.user_id, m.member_id
ORDER BY m.member_id
"""

_PAGE = """
SELECT member_id FROM account_members
WHERE user_id = $1 AND member_id > $2 ORDER BY member_id LIMIT $3
"""

_UPSERT = """
INSERT INTO account_members (user_id, member_id, cap_micros, cap_period, active, created_at,
                             updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $6)
ON CONFLICT (user_id, member_id) DO UPDATE SET cap_micros = EXCLUDED.cap_micros,
    cap_period = EXCLUDED.cap_period, active = EXCLUDED.active, updated_at = EXCLUDED.updated_at
"""

_CHANGE = """
INSERT INTO member_changes (user_id, member_id, after_transaction_id, cap_micros, cap_period,
                            active, changed_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)
"""


@dataclasses.dataclass(frozen=True)
class MemberCommand:
    user_id: str
    member_id: str
    cap_micros: int
    cap_period: str  # "day" or "month"
    active: bool


@dataclasses.dataclass(frozen=True)
class Member:
    user_id: str
    member_id: str
    cap_micros: int
    cap_period: str
    active: bool
    spent_micros: int
    held_micros: int
    period_end: dt.datetime
    created_at: dt.datetime
    updated_at: dt.datetime


def period_end(cap_period: str, now: dt.datetime) -> dt.datetime:
    """The end of the UTC day or calendar month that contains ``now``."""
    day = now.astimezone(dt.UTC).date()
    if cap_period == "day":
        end = day + dt.timedelta(days=1)
    else:
        end = (day.replace(day=1) + dt.timedelta(days=32)).replace(day=1)
    return dt.datetime(end.year, end.month, end.day, tzinfo=dt.UTC)


def utc_day(now: dt.datetime) -> dt.date:
    return now.astimezone(dt.UTC).date()


async def read(
    conn: Connection, user_id: str, member_ids: list[str], now: dt.datetime
) -> list[Member]:
    rows = await conn.fetch(_CURRENT, user_id, member_ids, utc_day(now))
    return [
        Member(
            user_id=r["user_id"],
            member_id=r["member_id"],
            cap_micros=r["cap_micros"],
            cap_period=r["cap_period"],
            active=r["active"],
            spent_micros=r["spent_micros"],
            held_micros=r["held_micros"],
            period_end=period_end(r["cap_period"], now),
            created_at=r["created_at"],
            updated_at=r["updated_at"],
        )
        for r in rows
    ]


async def set_member(conn: Connection, cmd: MemberCommand, clock: Clock) -> Member:
    """Create or replace the member, under the account lock (serialised with its debits)."""
    locked = await accounts.lock(conn, cmd.user_id, clock)
    now = locked.now
    args = (cmd.user_id, cmd.member_id, cmd.cap_micros, cmd.cap_period, cmd.active)
    await conn.execute(_UPSERT, *args, now)
    await conn.execute(
        _CHANGE,
        cmd.user_id,
        cmd.member_id,
        locked.account.last_transaction_id or 0,
        cmd.cap_micros,
        cmd.cap_period,
        cmd.active,
        now,
    )
    (member,) = await read(conn, cmd.user_id, [cmd.member_id], now)
    return member


async def page(
    conn: Connection, user_id: str, after: str, size: int, clock: Clock
) -> tuple[list[Member], str]:
    account = await accounts.read(conn, user_id)
    ids = [r["member_id"] for r in await conn.fetch(_PAGE, user_id, after, size + 1)]
    found = await read(conn, user_id, ids[:size], accounts.ledger_time(clock, account))
    return found, (ids[size - 1] if len(ids) > size else "")


async def check_room(
    conn: Connection, user_id: str, member_id: str, amount_micros: int, now: dt.datetime
) -> None:
    """Refuse, before any write, a spend the member may not make now (the caller holds the
    account lock and took ``now`` after it)."""
    found = await read(conn, user_id, [member_id], now)
    if not found or not found[0].active:
        raise not_found(member_id)
    member = found[0]
    used = member.spent_micros + member.held_micros
    if used + amount_micros > member.cap_micros:
        raise cap_exceeded(
            member_id, used, amount_micros, member.cap_micros, member.cap_period, now
        )


def not_found(member_id: str) -> errors.LedgerError:
    return errors.not_found(
        "MEMBER_NOT_FOUND", "no active member with that member_id", member_id=member_id
    )


def cap_exceeded(
    member_id: str,
    used_micros: int,
    amount_micros: int,
    cap_micros: int,
    cap_period: str,
    now: dt.datetime,
) -> errors.LedgerError:
    """MEMBER_CAP_EXCEEDED (a debit decides it in the database: ledger/debit.py)."""
    left = max(cap_micros - used_micros, 0)
    return errors.precondition(
        "MEMBER_CAP_EXCEEDED",
        f"member {member_id} has {left} of its {cap_period} cap of "
        f"{cap_micros} micros left; {amount_micros} required",
        member_id=member_id,
        spent_micros=str(used_micros),
        required_micros=str(amount_micros),
        cap_micros=str(cap_micros),
        period_end=period_end(cap_period, now).isoformat().replace("+00:00", "Z"),
    )
