"""Attacks on team wallets, usage rollups and the credit model, against the real server.

Each test is one attack: the figures it expects are the contract's. A test marked xfail
(strict) is a finding the ledger still gets wrong; the others are attacks that held.
VerifyLedger runs after every test (the ``verified`` fixture).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json

import asyncpg
import pytest
from creditwallet.client import builders
from creditwallet.client import errors as cw
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.server.ledger import usage as usage_ledger
from creditwallet.v1 import common_pb2 as pb
from creditwallet.v1 import wallet_service_pb2 as wpb

from tests import harness
from tests.harness import Ledger, new_user

pytestmark = pytest.mark.usefixtures("verified")

CREDIT = 1_000_000


def midnight(moment: dt.datetime) -> dt.datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


async def team(admin: AsyncCreditWalletClient, credits: int = 1000) -> str:
    user = new_user()
    await admin.grant(
        user, source=pb.LOT_SOURCE_PROMO, amount_micros=credits * CREDIT, create_account=True
    )
    return user


def forged_token(
    user: str, start: dt.date, end: dt.date, group_by: tuple[str, ...], *keys: str
) -> str:
    """A page token as anyone can build it: the digest is a hash of the request's own fields."""
    query = usage_ledger.UsageQuery(user, start, end, group_by, page_size=1)
    raw = json.dumps(["u1", query.digest(), *keys]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


async def member_figures(admin: AsyncCreditWalletClient, user: str, member: str) -> tuple[int, int]:
    found = [m for m in (await admin.list_members(user)).members if m.member_id == member]
    assert len(found) == 1
    return found[0].spent_micros, found[0].held_micros


# --- GetUsage page tokens -------------------------------------------------------------------


@pytest.mark.parametrize("key", ["\u0000", "\ud800"], ids=["nul", "lone-surrogate"])
async def test_forged_usage_token_with_an_unstorable_key_is_invalid_argument(
    ledger: Ledger, admin: AsyncCreditWalletClient, agent: AsyncCreditWalletClient, key: str
) -> None:
    user = await team(admin)
    await agent.debit(user, amount_micros=CREDIT, agent_id=None, session_id="s1")
    start = midnight(ledger.clock.now())
    end = start + dt.timedelta(days=1)
    token = forged_token(user, start.date(), end.date(), ("session",), key)
    with pytest.raises(cw.InvalidArgument):
        await agent.get_usage(
            user, start_time=start, end_time=end, group_by=["session"], page_token=token
        )


async def test_usage_token_reused_with_another_range_or_account_is_refused(
    ledger: Ledger, admin: AsyncCreditWalletClient, agent: AsyncCreditWalletClient
) -> None:
    user, other = await team(admin), await team(admin)
    for session in ("a", "b"):
        await agent.debit(user, amount_micros=CREDIT, session_id=session)
        await agent.debit(other, amount_micros=CREDIT, session_id=session)
    start = midnight(ledger.clock.now())
    end = start + dt.timedelta(days=1)
    page = await agent.get_usage(
        user, start_time=start, end_time=end, group_by=["session"], page_size=1
    )
    assert page.next_page_token
    with pytest.raises(cw.InvalidArgument):
        await agent.get_usage(
            other,
            start_time=start,
            end_time=end,
            group_by=["session"],
            page_token=page.next_page_token,
        )
    with pytest.raises(cw.InvalidArgument):
        await agent.get_usage(
            user,
            start_time=start,
            end_time=end + dt.timedelta(days=1),
            group_by=["session"],
            page_token=page.next_page_token,
        )
    # Another page size with the same token is the same request's next page.
    rest = await agent.get_usage(
        user,
        start_time=start,
        end_time=end,
        group_by=["session"],
        page_size=5,
        page_token=page.next_page_token,
    )
    assert [g.session_id for g in rest.groups] == ["b"]


# --- Member caps ----------------------------------------------------------------------------


async def test_list_members_does_not_count_an_expired_hold_as_held(
    ledger: Ledger, admin: AsyncCreditWalletClient, agent: AsyncCreditWalletClient
) -> None:
    user = await team(admin)
    await admin.set_member(user, "m", cap_micros=5 * CREDIT, cap_period="month")
    await agent.authorize(user, amount_micros=2 * CREDIT, member_id="m", ttl_seconds=60)
    ledger.clock.advance(seconds=61)
    balance = await agent.get_balance(user)
    assert balance.held_micros == 0
    # No write touched the account since the hold expired: the read must say what a debit
    # would find (the cap's room), as GetBalance does.
    assert await member_figures(admin, user, "m") == (0, 0)


async def test_replayed_member_debit_counts_once(
    ledger: Ledger, admin: AsyncCreditWalletClient, agent: AsyncCreditWalletClient
) -> None:
    user = await team(admin)
    await admin.set_member(user, "m", cap_micros=3 * CREDIT, cap_period="day")
    request = builders.new_request_id()
    replies = await asyncio.gather(
        *(
            agent.debit(user, amount_micros=2 * CREDIT, member_id="m", request_id=request)
            for _ in range(6)
        )
    )
    assert len({r.transaction_id for r in replies}) == 1
    assert await member_figures(admin, user, "m") == (2 * CREDIT, 0)
    await agent.debit(user, amount_micros=CREDIT, member_id="m")
    with pytest.raises(cw.MemberCapExceeded):
        await agent.debit(user, amount_micros=1, member_id="m")
    start = midnight(ledger.clock.now())
    reply = await agent.get_usage(
        user, start_time=start, end_time=start + dt.timedelta(days=1), group_by=["member"]
    )
    assert [(g.member_id, g.net_micros, g.debit_count) for g in reply.groups] == [
        ("m", 3 * CREDIT, 2)
    ]


async def test_aborted_batch_of_one_member_counts_each_debit_once(
    ledger: Ledger, admin: AsyncCreditWalletClient, agent: AsyncCreditWalletClient
) -> None:
    """A batch holding an unknown member (a refusal not stored in the batch) and several
    debits of one member: whatever the batcher reruns, each applied debit counts once."""
    user = await team(admin)
    await admin.set_member(user, "m", cap_micros=5 * CREDIT, cap_period="day")
    items = [builders.debit(user, amount_micros=CREDIT, member_id="m") for _ in range(7)]
    items.insert(3, builders.debit(user, amount_micros=CREDIT, member_id="ghost"))
    reply = await agent.batch_debit(items)
    reasons = [r.error.reason if r.HasField("error") else "applied" for r in reply.results]
    assert reasons.count("applied") == 5
    assert reasons.count("MEMBER_CAP_EXCEEDED") == 2
    assert reasons[3] == "MEMBER_NOT_FOUND"
    assert await member_figures(admin, user, "m") == (5 * CREDIT, 0)
    start = midnight(ledger.clock.now())
    got = await agent.get_usage(user, start_time=start, end_time=start + dt.timedelta(days=1))
    assert [(g.net_micros, g.debit_count) for g in got.groups] == [(5 * CREDIT, 5)]


async def test_cap_lowered_below_pending_holds_then_captured_across_midnight(
    ledger: Ledger, admin: AsyncCreditWalletClient, agent: AsyncCreditWalletClient
) -> None:
    now = ledger.clock.now()
    ledger.clock.set(max(now, now.replace(hour=23, minute=59, second=0, microsecond=0)))
    user = await team(admin)
    await admin.set_member(user, "m", cap_micros=10 * CREDIT, cap_period="day")
    first = await agent.authorize(user, amount_micros=6 * CREDIT, member_id="m")
    await agent.debit(user, amount_micros=4 * CREDIT, member_id="m")
    await admin.set_member(user, "m", cap_micros=2 * CREDIT, cap_period="day")
    ledger.clock.advance(seconds=120)  # the next UTC day
    await agent.capture(user, first.hold_id, amount_micros=5 * CREDIT)
    # Today's room is the new cap, untouched by yesterday's hold and its capture.
    await agent.debit(user, amount_micros=2 * CREDIT, member_id="m")
    with pytest.raises(cw.MemberCapExceeded):
        await agent.debit(user, amount_micros=1, member_id="m")
    history = await admin.list_transactions(user, type=pb.TRANSACTION_TYPE_DEBIT)
    capture = next(t for t in history.transactions if t.hold_id)
    await admin.reverse_debit(user, capture.transaction_id, amount_micros=3 * CREDIT)
    with pytest.raises(cw.MemberCapExceeded):
        await agent.debit(user, amount_micros=1, member_id="m")
    start = midnight(ledger.clock.now())
    got = await agent.get_usage(
        user,
        start_time=start - dt.timedelta(days=1),
        end_time=start + dt.timedelta(days=1),
        group_by=["day"],
    )
    # The capture counts on its own day in usage; the cap counts it on the hold's day.
    assert [(g.day, g.net_micros) for g in got.groups] == [
        ((start - dt.timedelta(days=1)).date().isoformat(), 4 * CREDIT),
        (start.date().isoformat(), 4 * CREDIT),
    ]


async def test_month_hold_captured_next_month_then_reversed(
    ledger: Ledger, admin: AsyncCreditWalletClient, agent: AsyncCreditWalletClient
) -> None:
    today = ledger.clock.now().date()
    next_month = (today.replace(day=1) + dt.timedelta(days=32)).replace(day=1)
    ledger.clock.set(
        dt.datetime(next_month.year, next_month.month, next_month.day, tzinfo=dt.UTC)
        - dt.timedelta(seconds=30)
    )
    user = await team(admin)
    await admin.set_member(user, "m", cap_micros=4 * CREDIT, cap_period="month")
    hold = await agent.authorize(user, amount_micros=4 * CREDIT, member_id="m", ttl_seconds=600)
    ledger.clock.advance(seconds=60)
    await agent.debit(user, amount_micros=4 * CREDIT, member_id="m")
    captured = await agent.capture(user, hold.hold_id)
    await admin.reverse_debit(user, captured.transaction_id)
    # The reversal gives back to last month, not this one.
    with pytest.raises(cw.MemberCapExceeded):
        await agent.debit(user, amount_micros=1, member_id="m")
    assert await member_figures(admin, user, "m") == (4 * CREDIT, 0)


async def test_forced_interleaving_capture_void_and_debits_of_one_member(
    ledger: Ledger, admin: AsyncCreditWalletClient, agent: AsyncCreditWalletClient
) -> None:
    user = await team(admin)
    await admin.set_member(user, "m", cap_micros=5 * CREDIT, cap_period="day")
    keep = await agent.authorize(user, amount_micros=3 * CREDIT, member_id="m")
    drop = await agent.authorize(user, amount_micros=2 * CREDIT, member_id="m")
    blocker = await asyncpg.connect(ledger.dsn)
    await blocker.execute("BEGIN")
    await blocker.execute("SELECT 1 FROM credits WHERE user_id = $1 FOR UPDATE", user)
    calls = [
        asyncio.ensure_future(agent.capture(user, keep.hold_id, amount_micros=CREDIT)),
        asyncio.ensure_future(agent.void(user, drop.hold_id)),
        *(
            asyncio.ensure_future(agent.debit(user, amount_micros=CREDIT, member_id="m"))
            for _ in range(6)
        ),
    ]
    await harness.waiting_on_locks(blocker, 1)
    await blocker.execute("COMMIT")
    await blocker.close()
    found = await asyncio.gather(*calls, return_exceptions=True)
    refused = [f for f in found if isinstance(f, Exception)]
    assert all(isinstance(f, cw.MemberCapExceeded) for f in refused), refused
    spent, held = await member_figures(admin, user, "m")
    assert held == 0
    assert spent <= 5 * CREDIT
    # Capture (1) + debits that fit: whichever order, the cap is exact once holds settle.
    applied_debits = 6 - len(refused)
    assert spent == CREDIT + applied_debits * CREDIT


async def test_deeply_nested_usage_token_is_invalid_argument(
    ledger: Ledger, admin: AsyncCreditWalletClient, agent: AsyncCreditWalletClient
) -> None:
    """Within the token's length bound, JSON nested deeper than the decoder's recursion limit."""
    user = await team(admin)
    start = midnight(ledger.clock.now())
    raw = b"[" * 1500
    token = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert len(token) <= 2048
    with pytest.raises(cw.InvalidArgument):
        await agent.get_usage(
            user,
            start_time=start,
            end_time=start + dt.timedelta(days=1),
            group_by=["session"],
            page_token=token,
        )


async def test_deactivated_member_with_pending_holds_captures_and_voids(
    ledger: Ledger, admin: AsyncCreditWalletClient, agent: AsyncCreditWalletClient
) -> None:
    user = await team(admin)
    await admin.set_member(user, "m", cap_micros=5 * CREDIT, cap_period="day")
    one = await agent.authorize(user, amount_micros=3 * CREDIT, member_id="m")
    two = await agent.authorize(user, amount_micros=2 * CREDIT, member_id="m")
    await admin.set_member(user, "m", cap_micros=5 * CREDIT, cap_period="day", active=False)
    with pytest.raises(cw.MemberNotFound):
        await agent.debit(user, amount_micros=1, member_id="m")
    captured = await agent.capture(user, one.hold_id)
    await agent.void(user, two.hold_id)
    await admin.reverse_debit(user, captured.transaction_id, amount_micros=CREDIT)
    await admin.set_member(user, "m", cap_micros=5 * CREDIT, cap_period="day", active=True)
    assert await member_figures(admin, user, "m") == (2 * CREDIT, 0)
    await agent.debit(user, amount_micros=3 * CREDIT, member_id="m")
    with pytest.raises(cw.MemberCapExceeded):
        await agent.debit(user, amount_micros=1, member_id="m")


async def test_capture_of_nothing_and_refusals_leave_the_counters_alone(
    ledger: Ledger, admin: AsyncCreditWalletClient, agent: AsyncCreditWalletClient
) -> None:
    user = await team(admin, credits=3)
    await admin.set_member(user, "m", cap_micros=10 * CREDIT, cap_period="day")
    hold = await agent.authorize(user, amount_micros=2 * CREDIT, member_id="m")
    try:
        await agent.capture(user, hold.hold_id, amount_micros=0)
    except cw.Internal:
        raise
    except cw.CreditWalletError:
        await agent.void(user, hold.hold_id)
    # Refused for credits before the cap is looked at: nothing counted.
    with pytest.raises(cw.InsufficientCredits):
        await agent.debit(user, amount_micros=5 * CREDIT, member_id="m")
    with pytest.raises(cw.InsufficientCredits):
        await agent.authorize(user, amount_micros=5 * CREDIT, member_id="m")
    assert await member_figures(admin, user, "m") == (0, 0)


async def test_debits_queued_on_the_lock_across_midnight_count_on_the_new_day(
    ledger: Ledger, admin: AsyncCreditWalletClient, agent: AsyncCreditWalletClient
) -> None:
    """Debits, holds and a batch wait on the account lock while the ledger's clock crosses
    midnight: each counts on the day its lock was taken, the new one, exactly to the cap."""
    now = ledger.clock.now()
    ledger.clock.set(max(now, now.replace(hour=23, minute=59, second=30, microsecond=0)))
    user = await team(admin)
    await admin.set_member(user, "m", cap_micros=4 * CREDIT, cap_period="day")
    await agent.debit(user, amount_micros=4 * CREDIT, member_id="m")  # today is full
    blocker = await asyncpg.connect(ledger.dsn)
    await blocker.execute("BEGIN")
    await blocker.execute("SELECT 1 FROM credits WHERE user_id = $1 FOR UPDATE", user)
    calls = [
        *(
            asyncio.ensure_future(agent.debit(user, amount_micros=CREDIT, member_id="m"))
            for _ in range(4)
        ),
        *(
            asyncio.ensure_future(agent.authorize(user, amount_micros=CREDIT, member_id="m"))
            for _ in range(2)
        ),
        asyncio.ensure_future(
            agent.batch_debit(
                [builders.debit(user, amount_micros=CREDIT, member_id="m") for _ in range(3)]
            )
        ),
    ]
    await harness.waiting_on_locks(blocker, 1)
    ledger.clock.advance(seconds=60)  # the next UTC day, while all of them wait
    await blocker.execute("COMMIT")
    await blocker.close()
    found = await asyncio.gather(*calls, return_exceptions=True)
    applied = 0
    for f in found[:-1]:
        if isinstance(f, Exception):
            assert isinstance(f, cw.MemberCapExceeded), f
        else:
            applied += 1
    batch = found[-1]
    assert isinstance(batch, wpb.BatchDebitResponse), batch
    for r in batch.results:
        if r.HasField("error"):
            assert r.error.reason == "MEMBER_CAP_EXCEEDED"
        else:
            applied += 1
    assert applied == 4
    spent, held = await member_figures(admin, user, "m")
    assert spent + held == 4 * CREDIT


async def test_one_request_id_twice_in_a_batch_counts_once(
    ledger: Ledger, admin: AsyncCreditWalletClient, agent: AsyncCreditWalletClient
) -> None:
    user = await team(admin)
    await admin.set_member(user, "m", cap_micros=3 * CREDIT, cap_period="month")
    item = builders.debit(user, amount_micros=2 * CREDIT, member_id="m")
    other = builders.debit(user, amount_micros=CREDIT, member_id="m")
    reply = await agent.batch_debit([item, item, other, item])
    assert all(not r.HasField("error") for r in reply.results)
    assert len({r.debit.transaction_id for r in reply.results}) == 2
    assert await member_figures(admin, user, "m") == (3 * CREDIT, 0)
    start = midnight(ledger.clock.now())
    got = await agent.get_usage(user, start_time=start, end_time=start + dt.timedelta(days=1))
    assert [(g.net_micros, g.debit_count) for g in got.groups] == [(3 * CREDIT, 2)]


async def test_bad_member_requests_are_refused_with_a_reason_never_internal(
    ledger: Ledger, admin: AsyncCreditWalletClient, agent: AsyncCreditWalletClient
) -> None:
    ghost = new_user()
    with pytest.raises(cw.AccountNotFound):
        await admin.set_member(ghost, "m", cap_micros=CREDIT)
    with pytest.raises(cw.AccountNotFound):
        await admin.list_members(ghost)
    user = await team(admin)
    for kwargs in (
        {"cap_micros": 0},
        {"cap_micros": -1},
        {"cap_micros": CREDIT, "cap_period": 0},
        {"cap_micros": CREDIT, "cap_period": 7},
    ):
        with pytest.raises(cw.InvalidArgument):
            await admin.set_member(user, "m", **kwargs)  # type: ignore[arg-type]
    for member in ("", "a b", "x" * 129, "é"):
        with pytest.raises(cw.InvalidArgument):
            await admin.set_member(user, member, cap_micros=CREDIT)
    for member in ("a b", "x" * 129, "\u0000"):
        with pytest.raises(cw.InvalidArgument):
            await agent.debit(user, amount_micros=1, member_id=member)
    with pytest.raises(cw.InvalidArgument):
        await admin.list_members(user, page_token="\u0000")
    with pytest.raises(cw.InvalidArgument):
        await admin.list_members(user, page_size=-1)
    assert (await admin.list_members(user)).members == []
    assert (await agent.get_balance(user)).available_micros == 1000 * CREDIT
