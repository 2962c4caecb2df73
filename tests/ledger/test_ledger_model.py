"""The ledger against a small oracle of its contract, step by step, on a moving clock.

A hypothesis state machine drives the real server (real gRPC, real PostgreSQL, group commit
on) through grants with expiries, debits, holds, partial and full captures, voids,
reversals, replays, request_id reuse, and clock steps forwards (often exactly onto an
expiry) and backwards. After every step it compares the reply, and the next ``GetBalance``,
with what the oracle says; at the end of each example ``VerifyLedger`` must be clean.

The oracle is written from the rules, not from the code:
- a write's time is the clock, never before the account's last recorded change;
- a lot is spendable strictly before its expiry; due expiries are recorded by the next write
  (a refused debit keeps that bookkeeping, any other refused write rolls it back);
- burn-down: the lowest priority first, then the soonest expiry (never-expiring last), then the
  oldest grant; a hold reserves in that order, a partial capture spends in that order, a
  reversal gives back in the reverse;
- a lot restricted to agents pays only for debits and holds for one of them; a spend for no
  agent burns unrestricted lots only;
- overdraft: a debit may take what its applicable lots do not cover as debt, up to the
  account's limit; debt beyond the limit refuses debits; holds never overdraw; unrestricted
  credits pay debt first (a new lot at once, credits given back right after), the oldest
  overdraft first, and a reversal cancels a debit's unpaid overdraft before refilling lots;
- credits given back to a lot that has expired expire at once;
- a replay returns the first answer (refusals that depend on state included), marked replayed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import itertools
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import pytest_asyncio
from creditwallet.client import errors as cw
from creditwallet.client.wallet import CreditWalletClient
from creditwallet.server import app
from creditwallet.server.clock import ManualClock
from creditwallet.v1 import common_pb2 as pb
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tests import harness
from tests.harness import TOKENS, Ledger

T = TypeVar("T")
CREDIT = 1_000_000
EXAMPLES = 40
STEPS = 50
NEVER = dt.datetime.max.replace(tzinfo=dt.UTC)
# What the examples did, by kind of request (printed at the end of the test).
OPERATIONS: dict[str, int] = {}


@dataclasses.dataclass
class Lot:
    lot_id: int
    granted_at: dt.datetime
    expires_at: dt.datetime | None
    remaining: int  # as the database holds it: an expired lot keeps it until recorded
    priority: int = 50
    agents: frozenset[str] = frozenset()

    def live(self, at: dt.datetime) -> bool:
        return self.expires_at is None or self.expires_at > at

    def applies(self, agent: str | None) -> bool:
        return not self.agents or agent in self.agents

    def order(self) -> tuple[int, dt.datetime, dt.datetime, int]:
        return (self.priority, self.expires_at or NEVER, self.granted_at, self.lot_id)


@dataclasses.dataclass
class Hold:
    hold_id: str
    user: str
    amount: int
    expires_at: dt.datetime
    portions: dict[int, int]
    status: str = "pending"


@dataclasses.dataclass
class Account:
    lots: dict[int, Lot] = dataclasses.field(default_factory=dict)
    holds: dict[str, Hold] = dataclasses.field(default_factory=dict)
    # transaction_id -> {lot_id: amount still reversible}
    debits: dict[str, dict[int, int]] = dataclasses.field(default_factory=dict)
    changed_at: dt.datetime | None = None
    debt: int = 0
    limit: int = 0
    # transaction_id -> the debit's overdraft not paid (nor reversed) yet, oldest first
    unpaid: dict[str, int] = dataclasses.field(default_factory=dict)

    def available(self, at: dt.datetime) -> int:
        return sum(lot.remaining for lot in self.lots.values() if lot.live(at)) - self.debt

    def applicable(self, at: dt.datetime, agent: str | None) -> int:
        return sum(x.remaining for x in self.live_in_order(at, agent))

    def held(self) -> int:
        return sum(h.amount for h in self.holds.values() if h.status == "pending")

    def live_in_order(self, at: dt.datetime, agent: str | None = "*") -> list[Lot]:
        return sorted(
            (
                x
                for x in self.lots.values()
                if x.live(at) and x.remaining and (agent == "*" or x.applies(agent))
            ),
            key=Lot.order,
        )


class Refused(Exception):
    def __init__(self, reason: str, stored: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.stored = stored


def _ts(value: dt.datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def _take_in_order(lots: list[Lot], amount: int) -> dict[int, int]:
    taken: dict[int, int] = {}
    for lot in lots:
        if amount == 0:
            break
        take = min(lot.remaining, amount)
        if take:
            taken[lot.lot_id] = take
            amount -= take
    assert amount == 0
    return taken


class LedgerModel(RuleBasedStateMachine):
    """One example: two fresh accounts, a clock, and every reply checked against the oracle."""

    ledger: Ledger
    client: CreditWalletClient
    counter = itertools.count()

    def __init__(self) -> None:
        super().__init__()
        self.users = [harness.new_user(), harness.new_user()]
        self.accounts = {u: Account() for u in self.users}
        # Every request the ledger recorded: (user, kind, request_id, how to send it, answer).
        self.sent: list[tuple[str, str, str, Callable[[], Any], Any]] = []

    # --- the oracle's time and bookkeeping --------------------------------------------------

    def _time(self, user: str) -> dt.datetime:
        changed = self.accounts[user].changed_at
        now = self.ledger.clock.now()
        return max(now, changed) if changed else now

    def _sweep(self, user: str, at: dt.datetime) -> bool:
        """Record due expiries (holds released, expired lots emptied); True if any."""
        account = self.accounts[user]
        recorded = False
        released = False
        for hold in account.holds.values():
            if hold.status == "pending" and hold.expires_at <= at:
                hold.status = "expired"
                self._give_back(user, hold.portions, at, settle=False)
                recorded = released = True
        for lot in account.lots.values():
            if lot.remaining and not lot.live(at):
                lot.remaining = 0
                recorded = True
        if released:
            self._settle(user, at)
        return recorded

    def _give_back(
        self, user: str, portions: dict[int, int], at: dt.datetime, settle: bool = True
    ) -> None:
        for lot_id, amount in portions.items():
            lot = self.accounts[user].lots[lot_id]
            if lot.live(at):  # what lands in an expired lot expires at once
                lot.remaining += amount
        if settle:
            self._settle(user, at)

    def _settle(self, user: str, at: dt.datetime) -> None:
        """Debt is paid at once from live unrestricted lots, in burn-down order."""
        account = self.accounts[user]
        paid = min(account.debt, account.applicable(at, None))
        if paid:
            taken = _take_in_order(account.live_in_order(at, None), paid)
            for lot_id, take in taken.items():
                account.lots[lot_id].remaining -= take
            self._pay_overdrafts(user, taken)
            account.debt -= paid

    def _pay_overdrafts(self, user: str, taken: dict[int, int]) -> None:
        """A payment of an overdraft becomes a reversible consumption of its debit."""
        account = self.accounts[user]
        portions = [[lot_id, amount] for lot_id, amount in taken.items()]
        for tx in sorted(account.unpaid, key=int):
            while account.unpaid[tx] and portions:
                take = min(account.unpaid[tx], portions[0][1])
                lot_id = portions[0][0]
                account.debits[tx][lot_id] = account.debits[tx].get(lot_id, 0) + take
                account.unpaid[tx] -= take
                portions[0][1] -= take
                if portions[0][1] == 0:
                    portions.pop(0)

    def _write(self, user: str, apply: Callable[[dt.datetime], T], debit: bool = False) -> T:
        """The oracle of one write: sweep, then apply; a refusal undoes all but a debit's sweep."""
        at = self._time(user)
        snapshot = _copy(self.accounts[user])
        swept = self._sweep(user, at)
        try:
            answer = apply(at)
        except Refused:
            if not debit:
                self.accounts[user] = snapshot
            elif swept:
                self.accounts[user].changed_at = at
            raise
        self.accounts[user].changed_at = at
        return answer

    # --- talking to the server --------------------------------------------------------------

    def _call(
        self, user: str, kind: str, rid: str, send: Callable[[], Any], model: Callable[[], Any]
    ) -> Any:
        """Send the request and check the reply against the oracle; the reply, if not refused."""
        OPERATIONS[kind] = OPERATIONS.get(kind, 0) + 1
        try:
            expected: Any = model()
        except Refused as refusal:
            expected = refusal
        try:
            reply: Any = send()
        except cw.CreditWalletError as error:
            reply = error
        if isinstance(expected, Refused):
            assert isinstance(reply, cw.CreditWalletError), (kind, expected.reason, reply)
            assert reply.reason == expected.reason, (kind, reply)
            if expected.stored:
                self.sent.append((user, kind, rid, send, reply))
            return None
        assert not isinstance(reply, cw.CreditWalletError), (kind, expected, reply)
        assert not reply.replayed
        self._check_reply(kind, reply, expected)
        self.sent.append((user, kind, rid, send, reply))
        return reply

    def _check_reply(self, kind: str, reply: Any, expected: dict[str, int]) -> None:
        got = {key: getattr(reply, key) for key in expected if key != "transaction_id"}
        assert got == {k: v for k, v in expected.items() if k != "transaction_id"}, kind

    def _rid(self) -> str:
        return f"m-{next(self.counter)}"

    # --- rules -------------------------------------------------------------------------------

    @initialize()
    def start(self) -> None:
        self.ledger.clock.advance(days=1)

    @rule(
        who=st.integers(0, 1),
        credits=st.integers(1, 20),
        expires_in=st.one_of(st.none(), st.integers(-60, 7200)),
        priority=st.sampled_from([None, 0, 10, 50, 90]),
        agents=st.sampled_from([(), (), ("ma",), ("mb",), ("ma", "mb")]),
    )
    def grant(
        self,
        who: int,
        credits: int,
        expires_in: int | None,
        priority: int | None,
        agents: tuple[str, ...],
    ) -> None:
        user = self.users[who]
        amount = credits * CREDIT
        clock_now = self.ledger.clock.now()
        expires_at = (
            clock_now + dt.timedelta(seconds=expires_in) if expires_in is not None else None
        )
        rid = self._rid()
        result: dict[str, Any] = {}

        def model() -> dict[str, int]:
            def apply(at: dt.datetime) -> dict[str, int]:
                if expires_at is not None and expires_at <= at:
                    raise Refused("INVALID_ARGUMENT", stored=False)
                result["at"] = at
                account = self.accounts[user]
                result["paid"] = 0 if agents else min(account.debt, amount)
                account.debt -= result["paid"]
                return {}

            return self._write(user, apply)

        def send() -> Any:
            reply = self.client.grant(
                user,
                amount,
                pb.LOT_SOURCE_PROMO,
                expires_at=expires_at,
                request_id=rid,
                create_account=True,
                priority=priority,
                agent_ids=agents,
            )
            return reply

        OPERATIONS["grant"] = OPERATIONS.get("grant", 0) + 1
        try:
            expected: Any = model()
        except Refused as refusal:
            expected = refusal
        try:
            reply: Any = send()
        except cw.CreditWalletError as error:
            reply = error
        if isinstance(reply, cw.CreditWalletError):
            assert isinstance(expected, Refused), reply
            assert reply.reason == expected.reason
            return
        assert not isinstance(expected, Refused), reply
        lot_id = int(reply.lot.lot_id)
        paid = result["paid"]
        self.accounts[user].lots[lot_id] = Lot(
            lot_id,
            result["at"],
            expires_at,
            amount - paid,
            50 if priority is None else priority,
            frozenset(agents),
        )
        if paid:
            self._pay_overdrafts(user, {lot_id: paid})
        assert (reply.lot.priority, tuple(reply.lot.agent_ids)) == (
            50 if priority is None else priority,
            agents,
        )
        assert reply.available_micros == self.accounts[user].available(result["at"])
        self.sent.append((user, "grant", rid, send, reply))

    @rule(
        who=st.integers(0, 1),
        credits=st.integers(1, 30),
        agent=st.sampled_from([None, None, "ma", "mb"]),
    )
    def debit(self, who: int, credits: int, agent: str | None) -> None:
        user, amount, rid = self.users[who], credits * CREDIT, self._rid()

        def model() -> dict[str, int]:
            def apply(at: dt.datetime) -> dict[str, int]:
                account = self.accounts[user]
                if not account.lots and not account.holds and account.changed_at is None:
                    raise Refused("ACCOUNT_NOT_FOUND")
                if account.debt > account.limit:
                    raise Refused("ACCOUNT_IN_DEBT")
                applicable = account.applicable(at, agent)
                shortfall = max(0, amount - applicable)
                if shortfall and account.debt + shortfall > account.limit:
                    raise Refused("INSUFFICIENT_CREDITS")
                taken = _take_in_order(account.live_in_order(at, agent), amount - shortfall)
                for lot_id, take in taken.items():
                    account.lots[lot_id].remaining -= take
                account.debt += shortfall
                result.update(taken=taken, shortfall=shortfall)
                return {"charged_micros": amount, "available_micros": account.available(at)}

            return self._write(user, apply, debit=True)

        result: dict[str, Any] = {}

        def send() -> Any:
            reply = self.client.debit(
                user, amount_micros=amount, request_id=rid, for_agent_id=agent or ""
            )
            return reply

        reply = self._call(user, "debit", rid, send, model)
        if reply is not None:
            self.accounts[user].debits[reply.transaction_id] = dict(result["taken"])
            if result["shortfall"]:
                self.accounts[user].unpaid[reply.transaction_id] = result["shortfall"]

    @rule(
        who=st.integers(0, 1),
        credits=st.integers(1, 15),
        ttl=st.integers(1, 5400),
        agent=st.sampled_from([None, None, "ma", "mb"]),
    )
    def authorize(self, who: int, credits: int, ttl: int, agent: str | None) -> None:
        user, amount, rid = self.users[who], credits * CREDIT, self._rid()
        result: dict[str, Any] = {}

        def model() -> dict[str, int]:
            def apply(at: dt.datetime) -> dict[str, int]:
                account = self.accounts[user]
                if not account.lots and account.changed_at is None:
                    raise Refused("ACCOUNT_NOT_FOUND")
                if account.debt > account.limit:
                    raise Refused("ACCOUNT_IN_DEBT")
                if account.applicable(at, agent) < amount:  # a hold never overdraws
                    raise Refused("INSUFFICIENT_CREDITS")
                taken = _take_in_order(account.live_in_order(at, agent), amount)
                for lot_id, take in taken.items():
                    account.lots[lot_id].remaining -= take
                result.update(taken=taken, expires_at=at + dt.timedelta(seconds=ttl))
                return {"held_micros": amount, "available_micros": account.available(at)}

            return self._write(user, apply)

        def send() -> Any:
            return self.client.authorize(
                user,
                amount_micros=amount,
                ttl_seconds=ttl,
                request_id=rid,
                for_agent_id=agent or "",
            )

        reply = self._call(user, "authorize", rid, send, model)
        if reply is not None:
            assert reply.expires_at.ToDatetime(dt.UTC) == result["expires_at"]
            self.accounts[user].holds[reply.hold_id] = Hold(
                reply.hold_id, user, amount, result["expires_at"], dict(result["taken"])
            )

    def _holds(self) -> list[Hold]:
        return [h for a in self.accounts.values() for h in a.holds.values()]

    @precondition(lambda self: self._holds())
    @rule(data=st.data(), fraction=st.sampled_from([None, 0, 1, 2, 3, 4]))
    def capture(self, data: st.DataObject, fraction: int | None) -> None:
        hold = data.draw(st.sampled_from(self._holds()))
        amount = None if fraction is None else hold.amount * fraction // 4 or None
        rid = self._rid()
        user = hold.user
        result: dict[str, Any] = {}

        def model() -> dict[str, int]:
            def apply(at: dt.datetime) -> dict[str, int]:
                if hold.status == "expired":
                    raise Refused("HOLD_EXPIRED")
                if hold.status != "pending":
                    raise Refused("HOLD_FINALIZED")
                charge = hold.amount if amount is None else amount
                account = self.accounts[user]
                ordered = sorted(hold.portions, key=lambda i: account.lots[i].order())
                spent: dict[int, int] = {}
                left = charge
                back: dict[int, int] = {}
                for lot_id in ordered:
                    take = min(left, hold.portions[lot_id])
                    left -= take
                    if take:
                        spent[lot_id] = take
                    if hold.portions[lot_id] - take:
                        back[lot_id] = hold.portions[lot_id] - take
                hold.status = "captured"
                self._give_back(user, back, at)
                result["spent"] = spent
                return {
                    "charged_micros": charge,
                    "released_micros": hold.amount - charge,
                    "available_micros": account.available(at),
                }

            return self._write(user, apply)

        def send() -> Any:
            return self.client.capture(
                hold.user, hold.hold_id, amount_micros=amount, request_id=rid
            )

        reply = self._call(user, "capture", rid, send, model)
        if reply is not None:
            self.accounts[user].debits[reply.transaction_id] = dict(result["spent"])

    @precondition(lambda self: self._holds())
    @rule(data=st.data())
    def void(self, data: st.DataObject) -> None:
        hold = data.draw(st.sampled_from(self._holds()))
        rid, user = self._rid(), hold.user

        def model() -> dict[str, int]:
            def apply(at: dt.datetime) -> dict[str, int]:
                if hold.status == "expired":
                    raise Refused("HOLD_EXPIRED")
                if hold.status != "pending":
                    raise Refused("HOLD_FINALIZED")
                hold.status = "voided"
                self._give_back(user, hold.portions, at)
                return {
                    "released_micros": hold.amount,
                    "available_micros": self.accounts[user].available(at),
                }

            return self._write(user, apply)

        self._call(
            user,
            "void",
            rid,
            lambda: self.client.void(hold.user, hold.hold_id, request_id=rid),
            model,
        )

    # Holds are settled more often than they are placed, so that the examples reach them.
    capture_more = capture
    void_more = void

    def _debits(self) -> list[tuple[str, str]]:
        return [(u, tx) for u, a in self.accounts.items() for tx in a.debits]

    @precondition(lambda self: self._debits())
    @rule(data=st.data(), fraction=st.sampled_from([None, 1, 2, 3]))
    def reverse(self, data: st.DataObject, fraction: int | None) -> None:
        user, tx = data.draw(st.sampled_from(self._debits()))
        consumed = self.accounts[user].debits[tx]
        reversible_now = sum(consumed.values()) + self.accounts[user].unpaid.get(tx, 0)
        amount = None if fraction is None else max(1, reversible_now * fraction // 3)
        rid = self._rid()

        def model() -> dict[str, int]:
            def apply(at: dt.datetime) -> dict[str, int]:
                account = self.accounts[user]
                unpaid = account.unpaid.get(tx, 0)
                left = sum(account.debits[tx].values()) + unpaid
                want = left if amount is None else amount
                if left == 0 or want > left:
                    raise Refused("REVERSAL_EXCEEDS_DEBIT")
                cancelled = min(want, unpaid)  # the unpaid overdraft first: less debt
                if cancelled:
                    account.unpaid[tx] -= cancelled
                    account.debt -= cancelled
                    want -= cancelled
                order = sorted(
                    account.debits[tx],
                    key=lambda i: account.lots[i].order(),
                    reverse=True,
                )
                back: dict[int, int] = {}
                for lot_id in order:
                    take = min(want, account.debits[tx][lot_id])
                    if take:
                        back[lot_id] = take
                        account.debits[tx][lot_id] -= take
                        want -= take
                self._give_back(user, back, at)
                return {
                    "reversed_micros": sum(back.values()) + cancelled,
                    "available_micros": account.available(at),
                }

            return self._write(user, apply)

        def send() -> Any:
            return self.client.reverse_debit(user, tx, amount_micros=amount, request_id=rid)

        self._call(user, "reverse", rid, send, model)

    @rule(who=st.integers(0, 1), credits=st.sampled_from([0, 0, 5, 15]))
    def set_overdraft_limit(self, who: int, credits: int) -> None:
        user, limit = self.users[who], credits * CREDIT
        account = self.accounts[user]
        OPERATIONS["overdraft"] = OPERATIONS.get("overdraft", 0) + 1
        if not account.lots and account.changed_at is None:
            with pytest.raises(cw.AccountNotFound):
                self.client.set_overdraft_limit(user, limit)
            return
        at = self._time(user)
        if self._sweep(user, at) or account.limit != limit:
            account.changed_at = at
        account.limit = limit
        reply = self.client.set_overdraft_limit(user, limit)
        assert (reply.limit_micros, reply.debt_micros, reply.available_micros) == (
            limit,
            account.debt,
            account.available(at),
        )

    @precondition(lambda self: self.sent)
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        _, kind, _, send, first = data.draw(st.sampled_from(self.sent))
        OPERATIONS["replay"] = OPERATIONS.get("replay", 0) + 1
        try:
            again: Any = send()
        except cw.CreditWalletError as error:
            again = error
        if isinstance(again, cw.CreditWalletError):
            assert isinstance(first, cw.CreditWalletError), (kind, again)
            assert (again.reason, again.metadata) == (first.reason, first.metadata)
            return
        assert not isinstance(first, cw.CreditWalletError), (kind, again)
        assert again.replayed, kind
        copy = type(again)()
        copy.CopyFrom(again)
        copy.replayed = False
        assert copy == first, kind

    @precondition(lambda self: any(s[1] == "debit" for s in self.sent))
    @rule(data=st.data())
    def reuse_a_request_id_for_something_else(self, data: st.DataObject) -> None:
        user, _, rid, _, _ = data.draw(st.sampled_from([s for s in self.sent if s[1] == "debit"]))
        OPERATIONS["reuse"] = OPERATIONS.get("reuse", 0) + 1
        with pytest.raises(cw.RequestIdReused):
            self.client.debit(user, amount_micros=7, request_id=rid)

    @rule(
        step=st.one_of(
            st.integers(1, 3000).map(lambda s: dt.timedelta(seconds=s)),
            st.integers(-600, -1).map(lambda s: dt.timedelta(seconds=s)),
            st.just(dt.timedelta(milliseconds=1)),
        )
    )
    def move_the_clock(self, step: dt.timedelta) -> None:
        OPERATIONS["clock"] = OPERATIONS.get("clock", 0) + 1
        self.ledger.clock.set(self.ledger.clock.now() + step)

    def _moments(self) -> list[dt.datetime]:
        return [
            x.expires_at for a in self.accounts.values() for x in a.lots.values() if x.expires_at
        ] + [h.expires_at for a in self.accounts.values() for h in a.holds.values()]

    @precondition(lambda self: self._moments())
    @rule(data=st.data())
    def jump_onto_an_expiry(self, data: st.DataObject) -> None:
        target = data.draw(st.sampled_from(self._moments()))
        nudge = data.draw(st.sampled_from([dt.timedelta(0), dt.timedelta(milliseconds=-1)]))
        self.ledger.clock.set(max(self.ledger.clock.now(), target + nudge))

    @invariant()
    def balances_agree(self) -> None:
        for user in self.users:
            account = self.accounts[user]
            try:
                reply = self.client.get_balance(user)
            except cw.AccountNotFound:
                assert not account.lots
                assert account.changed_at is None
                continue
            at = self._time(user)
            if self._sweep(user, at):
                account.changed_at = at
            assert reply.available_micros == account.available(at), user
            assert reply.held_micros == account.held(), user
            assert reply.debt_micros == account.debt, user
            for agent in ("ma", "mb"):
                for_agent = self.client.get_balance(user, agent_id=agent)
                assert for_agent.available_for_agent_micros == (
                    account.applicable(at, agent) - account.debt
                ), (user, agent)
            live = {
                int(lot.lot_id): lot.remaining_micros for group in reply.lots for lot in group.lots
            }
            assert live == {
                x.lot_id: x.remaining for x in account.lots.values() if x.live(at) and x.remaining
            }

    def teardown(self) -> None:
        report = self.client.verify_ledger()
        assert report.ok, [f"{v.invariant} {v.user_id}: {v.detail}" for v in report.violations]


def _copy(account: Account) -> Account:
    return Account(
        lots={k: dataclasses.replace(v) for k, v in account.lots.items()},
        holds={
            k: dataclasses.replace(v, portions=dict(v.portions)) for k, v in account.holds.items()
        },
        debits={k: dict(v) for k, v in account.debits.items()},
        changed_at=account.changed_at,
        debt=account.debt,
        limit=account.limit,
        unpaid=dict(account.unpaid),
    )


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def model_ledger(base_dsn: str, data_dir: Path) -> AsyncIterator[Ledger]:
    dsn = await harness.fresh_database(base_dsn)
    clock = ManualClock(harness.real_now())
    running = await app.start(harness.config(data_dir), dsn=dsn, clock=clock, address="127.0.0.1:0")
    ledger = Ledger(dsn, running, clock)
    # The oracle models lots, holds and time; streak rewards are another suite's concern.
    async with ledger.pool.acquire() as conn:
        await conn.execute("DELETE FROM streak_milestone_rewards")
    yield ledger
    await ledger.close()


async def test_the_ledger_behaves_as_its_oracle(model_ledger: Ledger) -> None:
    LedgerModel.ledger = model_ledger

    def run() -> None:
        with CreditWalletClient(model_ledger.target, TOKENS["admin"], retries=0) as client:
            LedgerModel.client = client
            machine = LedgerModel.TestCase
            machine.settings = settings(
                settings.get_profile("credit-wallet"),
                max_examples=EXAMPLES,
                stateful_step_count=STEPS,
            )
            machine().runTest()

    await asyncio.to_thread(run)
    print(
        f"\nledger model: {EXAMPLES} examples, {sum(OPERATIONS.values())} operations: "
        + ", ".join(f"{k}={v}" for k, v in sorted(OPERATIONS.items()))
    )
