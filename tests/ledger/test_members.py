"""Team wallets: members that share an account's credits, each under a cap per UTC period.

Against the real server and database: the cap counted exactly under concurrency (many debits,
batches and holds of one member racing, and a forced interleaving where all of them queue on
the account's lock first), unknown and inactive members refused with nothing changed, the
UTC day and month boundaries on the ManualClock, holds counting from Authorize until Capture
or Void, reversals giving back to the period of their debit, and the member in the history.
VerifyLedger (member caps and usage rollups included) runs after every test.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import asyncpg
import pytest
from creditwallet.client import errors as cw
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.v1 import admin_service_pb2 as apb
from creditwallet.v1 import common_pb2 as pb
from creditwallet.v1 import wallet_service_pb2 as wpb

from tests import harness
from tests.harness import Ledger, new_user

pytestmark = pytest.mark.usefixtures("verified")

CREDIT = 1_000_000


async def team(admin: AsyncCreditWalletClient, credits: int = 1000) -> str:
    user = new_user()
    await admin.grant(
        user, source=pb.LOT_SOURCE_PROMO, amount_micros=credits * CREDIT, create_account=True
    )
    return user


async def outcome(call: Any) -> str:
    try:
        await call
    except cw.CreditWalletError as exc:
        return exc.reason
    return "applied"


async def test_set_and_list_members(ledger: Ledger, admin: AsyncCreditWalletClient) -> None:
    user = await team(admin)
    reply = await admin.set_member(user, "alice", cap_micros=10 * CREDIT, cap_period="day")
    assert reply.member.cap_period == apb.MEMBER_CAP_PERIOD_DAY
    assert reply.member.active
    assert reply.member.spent_micros == 0
    tomorrow = ledger.clock.now().date() + dt.timedelta(days=1)
    assert reply.member.period_end.ToDatetime(tzinfo=dt.UTC) == dt.datetime(
        tomorrow.year, tomorrow.month, tomorrow.day, tzinfo=dt.UTC
    )
    for name in ("carol", "bob", "dave"):
        await admin.set_member(user, name, cap_micros=CREDIT, cap_period="month", active=False)
    # Replacing a member sets all of it.
    await admin.set_member(user, "bob", cap_micros=3 * CREDIT, cap_period="month")
    first = await admin.list_members(user, page_size=3)
    assert [m.member_id for m in first.members] == ["alice", "bob", "carol"]
    assert (first.members[1].cap_micros, first.members[1].active) == (3 * CREDIT, True)
    second = await admin.list_members(user, page_size=3, page_token=first.next_page_token)
    assert [m.member_id for m in second.members] == ["dave"]
    assert second.next_page_token == ""
    with pytest.raises(cw.AccountNotFound):
        await admin.set_member(new_user(), "alice", cap_micros=CREDIT)
    with pytest.raises(cw.InvalidArgument) as caught:
        await admin.set_member(
            user, "alice", cap_micros=CREDIT, cap_period=apb.MEMBER_CAP_PERIOD_UNSPECIFIED
        )
    assert caught.value.metadata["field"] == "cap_period"
    with pytest.raises(cw.InvalidArgument) as caught:
        await admin.set_member(user, "alice", cap_micros=0)
    assert caught.value.metadata["field"] == "cap_micros"
    with pytest.raises(cw.InvalidArgument) as caught:
        await admin.set_member(user, "no spaces", cap_micros=CREDIT)
    assert caught.value.metadata["field"] == "member_id"


async def test_unknown_and_inactive_members_are_refused_and_nothing_changes(
    admin: AsyncCreditWalletClient, agent: AsyncCreditWalletClient
) -> None:
    user = await team(admin, 10)
    await admin.set_member(user, "gone", cap_micros=5 * CREDIT, active=False)
    before = await agent.get_balance(user)
    for member in ("nobody", "gone"):
        with pytest.raises(cw.MemberNotFound) as caught:
            await agent.debit(user, amount_micros=CREDIT, member_id=member, request_id=member)
        assert caught.value.metadata["member_id"] == member
        with pytest.raises(cw.MemberNotFound):
            await agent.authorize(user, amount_micros=CREDIT, member_id=member)
        # The refusal is stored: a retry with the same request_id gets it again.
        with pytest.raises(cw.MemberNotFound):
            await agent.debit(user, amount_micros=CREDIT, member_id=member, request_id=member)
    after = await agent.get_balance(user)
    assert (after.available_micros, after.held_micros) == (
        before.available_micros,
        before.held_micros,
    )
    # Set active again, the member may spend.
    await admin.set_member(user, "gone", cap_micros=5 * CREDIT, active=True)
    await agent.debit(user, amount_micros=CREDIT, member_id="gone")


async def test_the_cap_refuses_with_spent_cap_and_period_end(
    ledger: Ledger, admin: AsyncCreditWalletClient, agent: AsyncCreditWalletClient
) -> None:
    user = await team(admin)
    await admin.set_member(user, "alice", cap_micros=3 * CREDIT, cap_period="day")
    await agent.debit(user, amount_micros=2 * CREDIT, member_id="alice")
    with pytest.raises(cw.MemberCapExceeded) as caught:
        await agent.debit(user, amount_micros=2 * CREDIT, member_id="alice")
    refusal = caught.value
    assert (refusal.spent_micros, refusal.required_micros, refusal.cap_micros) == (
        2 * CREDIT,
        2 * CREDIT,
        3 * CREDIT,
    )
    tomorrow = ledger.clock.now().date() + dt.timedelta(days=1)
    assert refusal.period_end == f"{tomorrow.isoformat()}T00:00:00Z"
    # Exactly up to the cap is allowed; the account itself and other members are not capped.
    await agent.debit(user, amount_micros=CREDIT, member_id="alice")
    await agent.debit(user, amount_micros=50 * CREDIT)
    history = await admin.list_transactions(user, type=pb.TRANSACTION_TYPE_DEBIT)
    assert [t.member_id for t in history.transactions] == ["", "alice", "alice"]
    # A lower cap refuses further debits and undoes nothing.
    listed = await admin.set_member(user, "alice", cap_micros=CREDIT, cap_period="day")
    assert listed.member.spent_micros == 3 * CREDIT
    with pytest.raises(cw.MemberCapExceeded):
        await agent.debit(user, amount_micros=1, member_id="alice")


async def test_a_members_debit_and_capture_name_the_member_in_their_events(
    ledger: Ledger, admin: AsyncCreditWalletClient, agent: AsyncCreditWalletClient
) -> None:
    user = await team(admin)
    await admin.set_member(user, "alice", cap_micros=10 * CREDIT, cap_period="day")
    await agent.debit(user, amount_micros=CREDIT, member_id="alice")
    await agent.debit(user, amount_micros=CREDIT)
    hold = await agent.authorize(user, amount_micros=CREDIT, member_id="alice")
    await agent.capture(user, hold.hold_id)
    async with ledger.pool.acquire() as conn:
        bodies = await conn.fetch(
            "SELECT body->>'member_id' AS member FROM events "
            "WHERE user_id = $1 AND type = 'credits.debited' ORDER BY seq",
            user,
        )
    assert [b["member"] for b in bodies] == ["alice", None, "alice"]


async def test_many_concurrent_debits_batches_and_holds_of_one_member_never_pass_its_cap(
    admin: AsyncCreditWalletClient, agent: AsyncCreditWalletClient
) -> None:
    user = await team(admin)
    await admin.set_member(user, "racer", cap_micros=25 * CREDIT, cap_period="month")
    debits = [agent.debit(user, amount_micros=CREDIT, member_id="racer") for _ in range(30)]
    holds = [agent.authorize(user, amount_micros=CREDIT, member_id="racer") for _ in range(10)]
    batch = agent.batch_debit(
        [
            wpb.DebitRequest(
                user_id=user, request_id=f"b{i}", amount_micros=CREDIT, member_id="racer"
            )
            for i in range(10)
        ]
    )
    results = await asyncio.gather(*(outcome(c) for c in debits + holds), batch)
    batch_reply = results[-1]
    singles = results[:-1]
    batched = [
        "applied" if r.WhichOneof("outcome") == "debit" else r.error.reason
        for r in batch_reply.results  # type: ignore[attr-defined]
    ]
    everything = list(singles) + batched
    assert everything.count("applied") == 25
    assert set(everything) == {"applied", "MEMBER_CAP_EXCEEDED"}
    (member,) = (await admin.list_members(user)).members
    assert member.spent_micros + member.held_micros == 25 * CREDIT


async def test_a_forced_interleaving_all_queued_on_the_account_lock(
    ledger: Ledger, admin: AsyncCreditWalletClient, agent: AsyncCreditWalletClient
) -> None:
    """Every writer is made to wait on the account's lock before it reads the member's spend:
    a check made before the lock, or a spend counted outside it, would let them all through."""
    user = await team(admin)
    await admin.set_member(user, "queued", cap_micros=5 * CREDIT, cap_period="day")
    blocker = await asyncpg.connect(ledger.dsn)
    await blocker.execute("BEGIN")
    await blocker.execute("SELECT 1 FROM credits WHERE user_id = $1 FOR UPDATE", user)
    holds = [
        asyncio.ensure_future(
            outcome(agent.authorize(user, amount_micros=CREDIT, member_id="queued"))
        )
        for _ in range(4)
    ]
    debits = [
        asyncio.ensure_future(outcome(agent.debit(user, amount_micros=CREDIT, member_id="queued")))
        for _ in range(4)
    ]
    # The 4 holds in their own transactions, and at least one debit batch, all waiting.
    await harness.waiting_on_locks(blocker, 5)
    await blocker.execute("COMMIT")
    await blocker.close()
    found = await asyncio.gather(*holds, *debits)
    assert found.count("applied") == 5
    assert found.count("MEMBER_CAP_EXCEEDED") == 3


async def test_day_and_month_boundaries_on_the_ledgers_clock(
    ledger: Ledger, admin: AsyncCreditWalletClient, agent: AsyncCreditWalletClient
) -> None:
    now = ledger.clock.now()
    last_second = dt.datetime(now.year, now.month, now.day, 23, 59, 59, tzinfo=dt.UTC)
    ledger.clock.set(max(now, last_second))
    user = await team(admin)
    await admin.set_member(user, "daily", cap_micros=2 * CREDIT, cap_period="day")
    await agent.debit(user, amount_micros=2 * CREDIT, member_id="daily")
    # A hold placed in the last second counts on its own day, even when captured after it.
    await admin.set_member(user, "daily", cap_micros=3 * CREDIT, cap_period="day")
    hold = await agent.authorize(user, amount_micros=CREDIT, member_id="daily")
    with pytest.raises(cw.MemberCapExceeded):
        await agent.debit(user, amount_micros=1, member_id="daily")
    ledger.clock.set(ledger.clock.now().replace(hour=0, minute=0, second=0) + dt.timedelta(days=1))
    await agent.capture(user, hold.hold_id)
    await agent.debit(user, amount_micros=3 * CREDIT, member_id="daily")
    with pytest.raises(cw.MemberCapExceeded):
        await agent.debit(user, amount_micros=1, member_id="daily")

    # A monthly cap: the last day of a month, then the first of the next.
    today = ledger.clock.now().date()
    next_month = (today.replace(day=1) + dt.timedelta(days=32)).replace(day=1)
    last_day = next_month - dt.timedelta(days=1)
    ledger.clock.set(dt.datetime(last_day.year, last_day.month, last_day.day, 12, tzinfo=dt.UTC))
    await admin.set_member(user, "monthly", cap_micros=4 * CREDIT, cap_period="month")
    await agent.debit(user, amount_micros=4 * CREDIT, member_id="monthly")
    with pytest.raises(cw.MemberCapExceeded) as caught:
        await agent.debit(user, amount_micros=CREDIT, member_id="monthly")
    assert caught.value.period_end == f"{next_month.isoformat()}T00:00:00Z"
    ledger.clock.set(dt.datetime(next_month.year, next_month.month, 1, tzinfo=dt.UTC))
    await agent.debit(user, amount_micros=4 * CREDIT, member_id="monthly")
    # Switching the period counts the same spend by the new period.
    switched = await admin.set_member(user, "monthly", cap_micros=4 * CREDIT, cap_period="day")
    assert switched.member.spent_micros == 4 * CREDIT


async def test_holds_count_from_authorize_until_capture_or_void(
    admin: AsyncCreditWalletClient, agent: AsyncCreditWalletClient
) -> None:
    user = await team(admin)
    await admin.set_member(user, "holder", cap_micros=5 * CREDIT, cap_period="day")
    first = await agent.authorize(user, amount_micros=3 * CREDIT, member_id="holder")
    second = await agent.authorize(user, amount_micros=2 * CREDIT, member_id="holder")
    with pytest.raises(cw.MemberCapExceeded):
        await agent.debit(user, amount_micros=1, member_id="holder")
    await agent.void(user, second.hold_id)
    await agent.capture(user, first.hold_id, amount_micros=CREDIT)  # 2 credits released
    (member,) = (await admin.list_members(user)).members
    assert (member.spent_micros, member.held_micros) == (CREDIT, 0)
    await agent.debit(user, amount_micros=4 * CREDIT, member_id="holder")
    history = await admin.list_transactions(user, type=pb.TRANSACTION_TYPE_DEBIT)
    assert [t.member_id for t in history.transactions] == ["holder", "holder"]


async def test_a_reversal_gives_back_to_the_period_of_its_debit(
    ledger: Ledger, admin: AsyncCreditWalletClient, agent: AsyncCreditWalletClient
) -> None:
    user = await team(admin)
    await admin.set_member(user, "rev", cap_micros=3 * CREDIT, cap_period="day")
    yesterday = await agent.debit(user, amount_micros=3 * CREDIT, member_id="rev")
    ledger.clock.advance(days=1)
    today = await agent.debit(user, amount_micros=3 * CREDIT, member_id="rev")
    # Reversing yesterday's debit gives nothing back to today.
    await admin.reverse_debit(user, yesterday.transaction_id)
    with pytest.raises(cw.MemberCapExceeded):
        await agent.debit(user, amount_micros=1, member_id="rev")
    # Reversing part of today's gives that part back today.
    await admin.reverse_debit(user, today.transaction_id, amount_micros=2 * CREDIT)
    await agent.debit(user, amount_micros=2 * CREDIT, member_id="rev")
    with pytest.raises(cw.MemberCapExceeded):
        await agent.debit(user, amount_micros=1, member_id="rev")
    start = ledger.clock.now().replace(hour=0, minute=0, second=0, microsecond=0)
    usage = await agent.get_usage(
        user,
        start_time=start - dt.timedelta(days=1),
        end_time=start + dt.timedelta(days=1),
        group_by=["member", "day"],
    )
    assert [(g.member_id, g.net_micros, g.reversal_count) for g in usage.groups] == [
        ("rev", 0, 1),
        ("rev", 3 * CREDIT, 1),
    ]


async def test_an_expired_hold_gives_its_amount_back_to_the_cap(
    ledger: Ledger, admin: AsyncCreditWalletClient, agent: AsyncCreditWalletClient
) -> None:
    user = await team(admin)
    await admin.set_member(user, "slow", cap_micros=2 * CREDIT, cap_period="month")
    hold = await agent.authorize(user, amount_micros=2 * CREDIT, member_id="slow", ttl_seconds=60)
    with pytest.raises(cw.MemberCapExceeded):
        await agent.debit(user, amount_micros=1, member_id="slow")
    ledger.clock.advance(seconds=61)
    # The debit's own lock releases the due hold first, then finds the room it left.
    await agent.debit(user, amount_micros=2 * CREDIT, member_id="slow")
    with pytest.raises(cw.HoldExpired):
        await agent.capture(user, hold.hold_id)
    (member,) = (await admin.list_members(user)).members
    assert (member.spent_micros, member.held_micros) == (2 * CREDIT, 0)
