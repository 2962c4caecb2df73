"""GetUsage: net credits and counts per group, from the rollups kept with every debit.

Against the real server: grouping by each key, reversals netting out on their debit's day,
captures on their own day, keyset pages that neither skip nor repeat a group while debits
are written between pages, and malformed requests refused with the field named.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from creditwallet.client import errors as cw
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.v1 import common_pb2 as pb
from creditwallet.v1 import wallet_service_pb2 as wpb

from tests.harness import Ledger, new_user

pytestmark = pytest.mark.usefixtures("verified")

CREDIT = 1_000_000


def midnight(moment: dt.datetime) -> dt.datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def net(reply: wpb.GetUsageResponse) -> dict[tuple[str, ...], tuple[int, int, int]]:
    return {
        (g.day, g.agent_id, g.member_id, g.session_id): (
            g.net_micros,
            g.debit_count,
            g.reversal_count,
        )
        for g in reply.groups
    }


async def funded(admin: AsyncCreditWalletClient, credits: int = 1000) -> str:
    user = new_user()
    await admin.grant(
        user, source=pb.LOT_SOURCE_PROMO, amount_micros=credits * CREDIT, create_account=True
    )
    return user


async def test_usage_per_day_and_agent_nets_reversals_on_the_debits_day(
    ledger: Ledger, admin: AsyncCreditWalletClient, agent: AsyncCreditWalletClient
) -> None:
    user = await funded(admin)
    await admin.set_agent_price("usage-a", CREDIT)
    await admin.set_agent_price("usage-b", 2 * CREDIT)
    day1 = midnight(ledger.clock.now())
    await agent.debit(user, agent_id="usage-a", session_id="s1")
    first = await agent.debit(user, agent_id="usage-b", quantity=3, session_id="s1")
    await agent.debit(user, amount_micros=500_000)
    ledger.clock.set(day1 + dt.timedelta(days=1, hours=3))
    await agent.debit(user, agent_id="usage-a", quantity=2, session_id="s2")
    # A reversal on day 2 of a day-1 debit counts against day 1.
    await admin.reverse_debit(user, first.transaction_id, amount_micros=2 * CREDIT)
    hold = await agent.authorize(user, agent_id="usage-b")
    await agent.capture(user, hold.hold_id, amount_micros=CREDIT)

    d1, d2 = day1.date().isoformat(), (day1 + dt.timedelta(days=1)).date().isoformat()
    reply = await agent.get_usage(
        user,
        start_time=day1,
        end_time=day1 + dt.timedelta(days=2),
        group_by=["agent", "day"],
    )
    assert net(reply) == {
        (d1, "", "", ""): (500_000, 1, 0),
        (d1, "usage-a", "", ""): (CREDIT, 1, 0),
        (d1, "usage-b", "", ""): (4 * CREDIT, 1, 1),
        (d2, "usage-a", "", ""): (2 * CREDIT, 1, 0),
        (d2, "usage-b", "", ""): (CREDIT, 1, 0),
    }
    assert reply.next_page_token == ""
    by_session = await agent.get_usage(
        user, start_time=day1, end_time=day1 + dt.timedelta(days=2), group_by=["session"]
    )
    assert net(by_session) == {
        ("", "", "", ""): (500_000 + CREDIT, 2, 0),
        ("", "", "", "s1"): (5 * CREDIT, 2, 1),
        ("", "", "", "s2"): (2 * CREDIT, 1, 0),
    }
    total = await agent.get_usage(user, start_time=day1, end_time=day1 + dt.timedelta(days=1))
    assert net(total) == {("", "", "", ""): (5_500_000, 3, 1)}
    empty = await agent.get_usage(
        user,
        start_time=day1 - dt.timedelta(days=30),
        end_time=day1,
        group_by=["day"],
    )
    assert list(empty.groups) == []
    # A full reversal nets the group out to zero, and the count of reversals shows it.
    await admin.reverse_debit(user, first.transaction_id)
    after = await agent.get_usage(
        user, start_time=day1, end_time=day1 + dt.timedelta(days=1), group_by=["agent"]
    )
    assert net(after)[("", "usage-b", "", "")] == (0, 1, 2)


async def test_pages_never_skip_or_repeat_a_group_while_debits_are_written(
    ledger: Ledger, admin: AsyncCreditWalletClient, agent: AsyncCreditWalletClient
) -> None:
    user = await funded(admin)
    start = midnight(ledger.clock.now())
    sessions = [f"s{i:02d}" for i in range(25)]
    await asyncio.gather(*(agent.debit(user, amount_micros=CREDIT, session_id=s) for s in sessions))
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        reply = await agent.get_usage(
            user,
            start_time=start,
            end_time=start + dt.timedelta(days=1),
            group_by=["session"],
            page_size=4,
            page_token=token,
        )
        pages += 1
        seen.extend(g.session_id for g in reply.groups)
        # Debits written while paging, to groups already read and to groups still ahead.
        await agent.debit(user, amount_micros=CREDIT, session_id=sessions[pages])
        await agent.debit(user, amount_micros=CREDIT, session_id=sessions[-pages])
        token = reply.next_page_token
        if not token:
            break
    assert seen == sorted(sessions)
    assert pages == 7


@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("start_time", {"start_time": dt.timedelta(hours=1)}),
        ("end_time", {"end_time": dt.timedelta(days=-1)}),
        ("end_time", {"end_time": dt.timedelta(days=400)}),
        ("group_by", {"group_by": ["day", "day"]}),
        ("page_size", {"page_size": 1001}),
    ],
)
async def test_malformed_usage_requests_name_the_field(
    ledger: Ledger,
    admin: AsyncCreditWalletClient,
    agent: AsyncCreditWalletClient,
    field: str,
    change: dict[str, object],
) -> None:
    user = await funded(admin, 1)
    start = midnight(ledger.clock.now())
    kwargs: dict[str, object] = {
        "start_time": start,
        "end_time": start + dt.timedelta(days=1),
        "group_by": [],
        "page_size": 0,
    }
    for key, value in change.items():
        if isinstance(value, dt.timedelta):
            kwargs[key] = kwargs[key] + value  # type: ignore[operator]
        else:
            kwargs[key] = value
    with pytest.raises(cw.InvalidArgument) as caught:
        await agent.get_usage(user, **kwargs)  # type: ignore[arg-type]
    assert caught.value.metadata["field"] == field


async def test_unknown_account_and_foreign_page_tokens_are_refused(
    ledger: Ledger, admin: AsyncCreditWalletClient, agent: AsyncCreditWalletClient
) -> None:
    start = midnight(ledger.clock.now())
    end = start + dt.timedelta(days=1)
    with pytest.raises(cw.AccountNotFound):
        await agent.get_usage(new_user(), start_time=start, end_time=end)
    user = await funded(admin)
    for session in ("a", "b", "c"):
        await agent.debit(user, amount_micros=CREDIT, session_id=session)
    page = await agent.get_usage(
        user, start_time=start, end_time=end, group_by=["session"], page_size=1
    )
    assert page.next_page_token
    with pytest.raises(cw.InvalidArgument):
        await agent.get_usage(
            user,
            start_time=start,
            end_time=end,
            group_by=["agent"],
            page_token=page.next_page_token,
        )
    with pytest.raises(cw.InvalidArgument):
        await agent.get_usage(
            user, start_time=start, end_time=end, group_by=["session"], page_token="garbage!"
        )
