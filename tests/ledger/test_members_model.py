"""Team wallets against a small oracle of their rules, step by step, on a moving clock.

A hypothesis state machine drives the real server through members set, changed and
deactivated, debits with and without a member, holds placed, captured in part or whole,
voided or left to expire, reversals whole and partial, and clock steps (often onto a UTC
midnight, or a millisecond before it). Every reply (applied, MEMBER_CAP_EXCEEDED,
MEMBER_NOT_FOUND) is compared with the oracle's, and after every step each member's spent and
held credits of its current period; at the end of each example VerifyLedger must be clean.

The oracle is written from the rules (docs/teams-and-usage.md), not from the code:
- a write's time is the clock, never before the account's last write; due holds are released
  by the next write of the account, before it is decided;
- a debit counts on its own UTC day; a hold counts from Authorize on its own day, replaced by
  what its capture spends (on the hold's day); void and expiry give it back;
- a reversal gives back to the day of its debit (a capture's: its hold's day);
- a period is the UTC day, or the month made of its days; a member may spend while
  spent + held + amount <= cap, and only while it is set and active.
The account holds far more credits than any example spends: credits are another model's job.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import itertools
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest_asyncio
from creditwallet.client import errors as cw
from creditwallet.client.wallet import CreditWalletClient
from creditwallet.server import app
from creditwallet.server.clock import ManualClock
from creditwallet.v1 import admin_service_pb2 as apb
from creditwallet.v1 import common_pb2 as pb
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tests import harness
from tests.harness import TOKENS, Ledger

CREDIT = 1_000_000
EXAMPLES = 25
STEPS = 40
MEMBERS = ("m0", "m1")
OPERATIONS: dict[str, int] = {}


@dataclasses.dataclass
class Member:
    cap: int
    period: str
    active: bool


@dataclasses.dataclass
class Hold:
    hold_id: str
    member: str
    amount: int
    day: dt.date
    expires_at: dt.datetime
    status: str = "pending"


@dataclasses.dataclass
class Debit:
    transaction_id: str
    member: str
    day: dt.date  # the spend day
    left: int  # not yet reversed


def _utc_day(moment: dt.datetime) -> dt.date:
    return moment.astimezone(dt.UTC).date()


class MembersModel(RuleBasedStateMachine):
    ledger: Ledger
    client: CreditWalletClient
    counter = itertools.count()

    def __init__(self) -> None:
        super().__init__()
        self.user = harness.new_user()
        self.members: dict[str, Member] = {}
        self.spent: dict[tuple[str, dt.date], int] = {}
        self.holds: list[Hold] = []
        self.debits: list[Debit] = []
        self.changed_at: dt.datetime | None = None

    # --- the oracle -----------------------------------------------------------------------

    def _time(self) -> dt.datetime:
        now = self.ledger.clock.now()
        return max(now, self.changed_at) if self.changed_at else now

    def _write(self) -> tuple[dt.datetime, list[Hold]]:
        """The time of a write, and the due holds its sweep released first. A refused debit
        keeps its sweep; any other refused write rolls it back (``_undo``)."""
        at = self._time()
        swept = [h for h in self.holds if h.status == "pending" and h.expires_at <= at]
        for hold in swept:
            hold.status = "expired"
        return at, swept

    def _undo(self, swept: list[Hold]) -> None:
        for hold in swept:
            hold.status = "pending"

    def _days(self, member: str, at: dt.datetime) -> list[dt.date]:
        today = _utc_day(at)
        if self.members[member].period == "day":
            return [today]
        return [today - dt.timedelta(days=n) for n in range(today.day)]

    def _figures(self, member: str, at: dt.datetime) -> tuple[int, int]:
        days = set(self._days(member, at))
        spent = sum(v for (m, d), v in self.spent.items() if m == member and d in days)
        held = sum(
            h.amount
            for h in self.holds
            if h.member == member and h.status == "pending" and h.day in days
        )
        return spent, held

    def _decide(self, member: str | None, amount: int, at: dt.datetime) -> str:
        if member is None:
            return "applied"
        if member not in self.members or not self.members[member].active:
            return "MEMBER_NOT_FOUND"
        spent, held = self._figures(member, at)
        if spent + held + amount > self.members[member].cap:
            return "MEMBER_CAP_EXCEEDED"
        return "applied"

    def _rid(self) -> str:
        return f"mm-{next(self.counter)}"

    def _send(self, kind: str, call: Callable[[], Any]) -> tuple[str, Any]:
        OPERATIONS[kind] = OPERATIONS.get(kind, 0) + 1
        try:
            return "applied", call()
        except cw.CreditWalletError as error:
            return error.reason, None

    # --- rules ----------------------------------------------------------------------------

    @initialize()
    def start(self) -> None:
        self.client.grant(
            self.user,
            source=pb.LOT_SOURCE_PROMO,
            amount_micros=100_000 * CREDIT,
            create_account=True,
        )
        self.changed_at = self._time()
        for who, period in zip(MEMBERS, ("day", "month"), strict=True):
            self.client.set_member(self.user, who, cap_micros=8 * CREDIT, cap_period=period)
            self.members[who] = Member(8 * CREDIT, period, True)

    @rule(
        who=st.sampled_from(MEMBERS),
        cap=st.integers(1, 12),
        period=st.sampled_from(["day", "month"]),
        active=st.booleans(),
    )
    def set_member(self, who: str, cap: int, period: str, active: bool) -> None:
        at, swept = self._write()
        outcome, _ = self._send(
            "set_member",
            lambda: self.client.set_member(
                self.user, who, cap_micros=cap * CREDIT, cap_period=period, active=active
            ),
        )
        assert outcome == "applied"
        self.members[who] = Member(cap * CREDIT, period, active)
        if swept:  # the member's own row is not the account's: only a sweep moves its time
            self.changed_at = at

    @rule(who=st.sampled_from((*MEMBERS, None)), credits=st.integers(1, 5))
    def debit(self, who: str | None, credits: int) -> None:
        at, swept = self._write()
        expected = self._decide(who, credits * CREDIT, at)
        outcome, reply = self._send(
            "debit",
            lambda: self.client.debit(
                self.user, amount_micros=credits * CREDIT, member_id=who or ""
            ),
        )
        assert outcome == expected, (who, credits)
        if outcome == "applied" or swept:
            self.changed_at = at
        if outcome == "applied" and who is not None:
            day = _utc_day(at)
            self.spent[(who, day)] = self.spent.get((who, day), 0) + credits * CREDIT
            self.debits.append(Debit(reply.transaction_id, who, day, credits * CREDIT))

    @rule(who=st.sampled_from(MEMBERS), credits=st.integers(1, 5), ttl=st.integers(60, 7200))
    def authorize(self, who: str, credits: int, ttl: int) -> None:
        at, swept = self._write()
        expected = self._decide(who, credits * CREDIT, at)
        outcome, reply = self._send(
            "authorize",
            lambda: self.client.authorize(
                self.user, amount_micros=credits * CREDIT, member_id=who, ttl_seconds=ttl
            ),
        )
        assert outcome == expected, (who, credits)
        if outcome != "applied":
            self._undo(swept)
            return
        self.changed_at = at
        if outcome == "applied":
            self.holds.append(
                Hold(
                    reply.hold_id,
                    who,
                    credits * CREDIT,
                    _utc_day(at),
                    at + dt.timedelta(seconds=ttl),
                )
            )

    def _pending(self) -> list[Hold]:
        return [h for h in self.holds if h.status == "pending"]

    @precondition(lambda self: self._pending())
    @rule(data=st.data(), part=st.sampled_from([None, 1, 2]))
    def capture(self, data: st.DataObject, part: int | None) -> None:
        hold = data.draw(st.sampled_from(self._pending()))
        at, swept = self._write()
        amount = hold.amount if part is None else max(1, hold.amount * part // 3)
        outcome, reply = self._send(
            "capture",
            lambda: self.client.capture(self.user, hold.hold_id, amount_micros=amount),
        )
        if hold.status == "expired":
            assert outcome == "HOLD_EXPIRED"
            self._undo(swept)
            return
        assert outcome == "applied"
        self.changed_at = at
        hold.status = "captured"
        key = (hold.member, hold.day)
        self.spent[key] = self.spent.get(key, 0) + amount
        self.debits.append(Debit(reply.transaction_id, hold.member, hold.day, amount))

    @precondition(lambda self: self._pending())
    @rule(data=st.data())
    def void(self, data: st.DataObject) -> None:
        hold = data.draw(st.sampled_from(self._pending()))
        at, swept = self._write()
        outcome, _ = self._send("void", lambda: self.client.void(self.user, hold.hold_id))
        if hold.status == "expired":
            assert outcome == "HOLD_EXPIRED"
            self._undo(swept)
            return
        assert outcome == "applied"
        self.changed_at = at
        hold.status = "voided"

    @precondition(lambda self: any(d.left for d in self.debits))
    @rule(data=st.data(), whole=st.booleans())
    def reverse(self, data: st.DataObject, whole: bool) -> None:
        debit = data.draw(st.sampled_from([d for d in self.debits if d.left]))
        at, _ = self._write()
        amount = debit.left if whole else max(1, debit.left // 2)
        outcome, _ = self._send(
            "reverse",
            lambda: self.client.reverse_debit(
                self.user, debit.transaction_id, amount_micros=amount
            ),
        )
        assert outcome == "applied"
        self.changed_at = at
        debit.left -= amount
        self.spent[(debit.member, debit.day)] -= amount

    @rule(
        step=st.sampled_from(
            [
                dt.timedelta(minutes=30),
                dt.timedelta(hours=5),
                dt.timedelta(hours=23),
                dt.timedelta(days=9),
            ]
        )
    )
    def move_the_clock(self, step: dt.timedelta) -> None:
        self.ledger.clock.advance(seconds=step.total_seconds())

    @rule(nudge=st.sampled_from([dt.timedelta(0), dt.timedelta(milliseconds=-1)]))
    def jump_onto_midnight(self, nudge: dt.timedelta) -> None:
        now = self.ledger.clock.now()
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0) + dt.timedelta(days=1)
        self.ledger.clock.set(max(now, midnight + nudge))

    @invariant()
    def members_agree(self) -> None:
        if self.changed_at is None:
            return
        listed = {m.member_id: m for m in self.client.list_members(self.user).members}
        assert set(listed) == set(self.members)
        at = self._time()
        for name, member in self.members.items():
            got = listed[name]
            period = apb.MemberCapPeriod.Name(got.cap_period).removeprefix("MEMBER_CAP_PERIOD_")
            assert (got.cap_micros, period.lower(), got.active) == (
                member.cap,
                member.period,
                member.active,
            )
            # A read does not release due holds: compare with the holds still pending.
            assert (got.spent_micros, got.held_micros) == self._figures(name, at), name

    def teardown(self) -> None:
        report = self.client.verify_ledger()
        assert report.ok, [f"{v.invariant} {v.user_id}: {v.detail}" for v in report.violations]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def model_ledger(base_dsn: str, data_dir: Path) -> AsyncIterator[Ledger]:
    dsn = await harness.fresh_database(base_dsn)
    clock = ManualClock(harness.real_now())
    running = await app.start(harness.config(data_dir), dsn=dsn, clock=clock, address="127.0.0.1:0")
    ledger = Ledger(dsn, running, clock)
    async with ledger.pool.acquire() as conn:
        await conn.execute("DELETE FROM streak_milestone_rewards")
    yield ledger
    await ledger.close()


async def test_team_wallets_behave_as_their_oracle(model_ledger: Ledger) -> None:
    MembersModel.ledger = model_ledger

    def run() -> None:
        with CreditWalletClient(model_ledger.target, TOKENS["admin"], retries=0) as client:
            MembersModel.client = client
            machine = MembersModel.TestCase
            machine.settings = settings(
                settings.get_profile("credit-wallet"),
                max_examples=EXAMPLES,
                stateful_step_count=STEPS,
            )
            machine().runTest()

    await asyncio.to_thread(run)
    print(
        f"\nmembers model: {EXAMPLES} examples, {sum(OPERATIONS.values())} operations: "
        + ", ".join(f"{k}={v}" for k, v in sorted(OPERATIONS.items()))
    )
