"""Smart Streaks: per-day activity, the streak state and milestone rewards
(docs/rewards.md).

Rules, exactly (days are UTC dates):

- A day is *active* when the user made at least one successful debit (Debit or Capture)
  on it. A reversed debit still made its day active.
- A *streak* is a run of active days in which every gap between two consecutive active
  days is either 0 missed days or exactly 1 missed day that is *forgiven*. A missed day is
  forgiven when the streak forgave no other missed day in the 7 days before it, i.e. any
  two forgiven days of one streak are at least 7 days apart, so any 7 consecutive days
  hold at most one forgiven day ("one missed day in any 7").
- ``current_days`` counts the streak's active days; a forgiven day is not counted (it is
  bridged, not credited). Two missed days in a row, or a second missed day within 7 days
  of the last forgiven one, end the streak; the next active day starts a new one at 1.
- At read time on day T with last active day L: the streak is alive when L >= T - 1, or
  when L = T - 2 and the missed day T - 1 could still be forgiven (if the user is active
  today). Otherwise the current streak reads 0; the stored row is replaced on the next
  active day. ``grace_day_used`` says a missed day within the last 7 days (or the pending
  T - 1) was forgiven, so missing the next day ends the streak.
- Milestones (table ``streak_milestone_rewards``, default 3/7/14/30 days → 1/5/10/25
  credits) are rewarded when ``current_days`` reaches them, once per streak: the streak
  is identified by its first day, and ``streak_milestones`` has that as its primary key
  with the milestone. The reward is a ``streak`` lot (90 days) granted in the debit's
  transaction. A new streak after a broken one earns every milestone again.

Cost: only the first debit of a day (the ``user_activity`` upsert says so) reads or
writes the streak; later debits that day pay one upsert. The caller holds the account
lock, so streak updates of one user are serialized with all their other writes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Final

import asyncpg
from creditwallet.server.db import Connection
from creditwallet.server.ledger import lots
from creditwallet.server.ledger.types import Account, default_expiry

# Two forgiven days of one streak are at least this many days apart.
GRACE_WINDOW_DAYS: Final = 7

_ACTIVITY = """
INSERT INTO user_activity (user_id, day, debit_count) VALUES ($1, $2, 1)
ON CONFLICT (user_id, day) DO UPDATE SET debit_count = user_activity.debit_count + 1
RETURNING (xmax = 0) AS first_today
"""

_STATE = """
SELECT current_days, streak_start, last_active_day, longest_days, grace_day
FROM streaks WHERE user_id = $1
"""

# Save the states of several accounts and return the reward of each one's milestone, unless
# its streak already got it (none when current_days is no milestone). One round trip for all
# of a batch's first debits of the day; rows go in user_id order, the order of every lock.
_SAVE_AND_DUE_REWARDS = """
WITH v AS (
    SELECT * FROM unnest($1::text[], $2::int[], $3::date[], $4::date[], $5::int[], $6::date[],
                         $7::timestamptz[])
        AS v(user_id, current_days, streak_start, last_active_day, longest_days, grace_day,
             updated_at)
), saved AS (
    INSERT INTO streaks (user_id, current_days, streak_start, last_active_day, longest_days,
                         grace_day, updated_at)
    SELECT * FROM v ORDER BY user_id
    ON CONFLICT (user_id) DO UPDATE SET current_days = EXCLUDED.current_days,
        streak_start = EXCLUDED.streak_start, last_active_day = EXCLUDED.last_active_day,
        longest_days = EXCLUDED.longest_days, grace_day = EXCLUDED.grace_day,
        updated_at = EXCLUDED.updated_at
)
SELECT v.user_id, r.reward_micros FROM v
JOIN streak_milestone_rewards r ON r.milestone_days = v.current_days
WHERE NOT EXISTS (
    SELECT 1 FROM streak_milestones m
    WHERE m.user_id = v.user_id AND m.streak_start = v.streak_start
      AND m.milestone_days = v.current_days)
ORDER BY v.user_id
"""

# A plain INSERT: a duplicate is a bug, and its unique violation aborts the debit.
_RECORD_MILESTONE = """
INSERT INTO streak_milestones (user_id, streak_start, milestone_days, reward_micros,
                               transaction_id, granted_at)
VALUES ($1, $2, $3, $4, $5, $6)
"""

_MILESTONES = """
SELECT milestone_days, reward_micros FROM streak_milestone_rewards ORDER BY milestone_days
"""


@dataclasses.dataclass(frozen=True)
class Reward:
    milestone_days: int
    amount_micros: int
    transaction_id: int


@dataclasses.dataclass(frozen=True)
class State:
    """A user's streak as of its last active day (the ``streaks`` row)."""

    current_days: int
    streak_start: dt.date
    last_active_day: dt.date
    longest_days: int
    grace_day: dt.date | None


@dataclasses.dataclass(frozen=True)
class View:
    """The streak as GetStreak shows it on a given day."""

    current_days: int
    longest_days: int
    next_milestone_days: int
    next_milestone_reward_micros: int
    grace_day_used: bool
    last_active_day: dt.date | None


def utc_day(now: dt.datetime) -> dt.date:
    return now.astimezone(dt.UTC).date()


def forgivable(state: State, missed: dt.date) -> bool:
    """Whether ``missed`` may be forgiven: no other forgiven day in the 7 days before it."""
    return state.grace_day is None or (missed - state.grace_day).days >= GRACE_WINDOW_DAYS


def advance(state: State | None, day: dt.date) -> State | None:
    """The state after the first debit of ``day``; None when it changes nothing."""
    if state is None:
        return State(1, day, day, 1, None)
    gap = (day - state.last_active_day).days
    if gap <= 0:  # not a new day (a clock behind another replica's): nothing to count
        return None
    grace = state.grace_day
    if gap == 1:
        current = state.current_days + 1
    elif gap == 2 and forgivable(state, day - dt.timedelta(days=1)):
        current, grace = state.current_days + 1, day - dt.timedelta(days=1)
    else:
        return State(1, day, day, max(state.longest_days, 1), None)
    return State(current, state.streak_start, day, max(state.longest_days, current), grace)


def view(state: State | None, today: dt.date, milestones: list[tuple[int, int]]) -> View:
    """The streak as seen on ``today``, whether or not the user was active since."""
    current, grace_used = 0, False
    if state is not None:
        gap = (today - state.last_active_day).days
        yesterday = today - dt.timedelta(days=1)
        if gap <= 1:
            current = state.current_days
            next_miss = state.last_active_day + dt.timedelta(days=1)
            grace_used = not forgivable(state, next_miss)
        elif gap == 2 and forgivable(state, yesterday):
            current, grace_used = state.current_days, True
    next_days, next_reward = next(((d, r) for d, r in milestones if d > current), (0, 0))
    return View(
        current_days=current,
        longest_days=state.longest_days if state else 0,
        next_milestone_days=next_days,
        next_milestone_reward_micros=next_reward,
        grace_day_used=grace_used,
        last_active_day=state.last_active_day if state else None,
    )


async def load(conn: Connection, user_id: str) -> State | None:
    return state_from(await conn.fetchrow(_STATE, user_id))


def state_from(row: asyncpg.Record | None, prefix: str = "") -> State | None:
    """The streak state from a ``streaks`` row, or from the debit's row (``streak_`` columns)."""
    if row is None or row[prefix + "streak_start"] is None:
        return None
    return State(
        current_days=row[prefix + "current_days"],
        streak_start=row[prefix + "streak_start"],
        last_active_day=row[prefix + "last_active_day"],
        longest_days=row[prefix + "longest_days"],
        grace_day=row[prefix + "grace_day"],
    )


async def read(conn: Connection, user_id: str, now: dt.datetime) -> View:
    """GetStreak (and the streak in GetBalance); the caller checked the account exists."""
    milestones = [(r["milestone_days"], r["reward_micros"]) for r in await conn.fetch(_MILESTONES)]
    return view(await load(conn, user_id), utc_day(now), milestones)


async def record_debit(
    conn: Connection, account: Account, now: dt.datetime
) -> tuple[Reward | None, Account]:
    """Count a successful debit made other than by ``debit.debit_many`` (a Capture) for the UTC
    day of ``now``; return a milestone reward if reached, and the account after it.

    Runs in the debit's transaction under its account lock, so the reward and the debit
    commit or roll back together. It must never raise a ``LedgerError``: a debit runs
    without a savepoint (``refuses_before_writing``), so a stored refusal raised here would
    commit the debit beside it. Any other failure aborts the whole transaction.
    """
    if not await conn.fetchval(_ACTIVITY, account.user_id, utc_day(now)):
        return None, account
    first = FirstDebit(account, now, await load(conn, account.user_id))
    rewarded = (await record_first_debits(conn, [first])).get(account.user_id)
    if rewarded is None:
        return None, account
    return rewarded


@dataclasses.dataclass(frozen=True)
class FirstDebit:
    """An account's first successful debit of a UTC day: the account after it, its time, and
    the streak state before it."""

    account: Account
    now: dt.datetime
    state: State | None


async def record_first_debits(
    conn: Connection, firsts: Sequence[FirstDebit]
) -> dict[str, tuple[Reward, Account]]:
    """Count the first debits of the day of several accounts (one each) in one statement;
    return the milestone reward each earned, with the account after it, by user_id.

    Same contract as ``record_debit``: under the accounts' locks, in the debits' transaction,
    never a ``LedgerError``.
    """
    advanced = {}
    for first in firsts:
        state = advance(first.state, utc_day(first.now))
        if state is not None:
            advanced[first.account.user_id] = (first, state)
    if not advanced:
        return {}
    saved = list(advanced.values())
    rows = await conn.fetch(
        _SAVE_AND_DUE_REWARDS,
        [f.account.user_id for f, _ in saved],
        [s.current_days for _, s in saved],
        [s.streak_start for _, s in saved],
        [s.last_active_day for _, s in saved],
        [s.longest_days for _, s in saved],
        [s.grace_day for _, s in saved],
        [f.now for f, _ in saved],
    )
    rewards = {}
    for row in rows:
        first, state = advanced[row["user_id"]]
        rewards[row["user_id"]] = await _reward(
            conn, first.account, state, row["reward_micros"], first.now
        )
    return rewards


async def _reward(
    conn: Connection, account: Account, state: State, amount: int, now: dt.datetime
) -> tuple[Reward, Account]:
    """Grant the milestone ``state.current_days``, due to this streak."""
    milestone = state.current_days
    granted = await lots.grant(
        conn,
        account,
        source="streak",
        amount_micros=amount,
        now=now,
        expires_at=default_expiry("streak", now),
        metadata={"milestone_days": str(milestone), "streak_start": str(state.streak_start)},
        grant_key=f"streak:{state.streak_start.isoformat()}:{milestone}",
    )
    await conn.execute(
        _RECORD_MILESTONE,
        account.user_id,
        state.streak_start,
        milestone,
        amount,
        granted.transaction_id,
        now,
    )
    return Reward(milestone, amount, granted.transaction_id), granted.account
