"""ListHolds and GetDailyTotals, the two reads behind the console's account page and overview.

GetDailyTotals is checked against an oracle: the same figures summed in Python from every
row ListTransactions returns for the module's accounts (its database holds no others).
"""

from __future__ import annotations

import collections
import datetime as dt

import pytest
from creditwallet.client import errors
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.core import limits
from creditwallet.v1 import common_pb2 as pb

from tests.harness import Ledger, new_user

pytestmark = pytest.mark.usefixtures("verified")
CREDIT = limits.MICROS_PER_CREDIT


async def _all_rows(admin: AsyncCreditWalletClient, user: str) -> list[pb.Transaction]:
    rows: list[pb.Transaction] = []
    token = ""
    while True:
        page = await admin.list_transactions(user, page_size=500, page_token=token)
        rows += page.transactions
        token = page.next_page_token
        if not token:
            return rows


async def test_pending_holds_only_soonest_first_in_pages_bound_to_the_account(
    admin: AsyncCreditWalletClient, agent: AsyncCreditWalletClient, ledger: Ledger
) -> None:
    user, other = new_user(), new_user()
    await agent.ensure_account(user)
    await agent.ensure_account(other)
    late = await agent.authorize(user, amount_micros=CREDIT, ttl_seconds=3000)
    soon = await agent.authorize(user, amount_micros=CREDIT // 2, ttl_seconds=60)
    middle = await agent.authorize(user, amount_micros=CREDIT // 4, ttl_seconds=2000)
    captured = await agent.authorize(user, amount_micros=CREDIT // 8, ttl_seconds=900)
    voided = await agent.authorize(user, amount_micros=CREDIT // 8, ttl_seconds=900)
    await agent.capture(user, captured.hold_id)
    await agent.void(user, voided.hold_id)
    await agent.authorize(other, amount_micros=CREDIT)

    listed = await admin.list_holds(user)
    assert [h.hold_id for h in listed.holds] == [soon.hold_id, middle.hold_id, late.hold_id]
    assert {h.status for h in listed.holds} == {pb.HOLD_STATUS_PENDING}
    assert listed.holds[0].amount_micros == CREDIT // 2
    assert listed.next_page_token == ""
    # Pages of one: each hold once, in the same order.
    seen, token = [], ""
    while True:
        page = await admin.list_holds(user, page_size=1, page_token=token)
        seen += [h.hold_id for h in page.holds]
        token = page.next_page_token
        if not token:
            break
        with pytest.raises(errors.InvalidArgument):
            await admin.list_holds(other, page_token=token)
    assert seen == [soon.hold_id, middle.hold_id, late.hold_id]
    # A hold past its expiry is not held any more, swept or not.
    ledger.clock.advance(seconds=61)
    after = await admin.list_holds(user)
    assert [h.hold_id for h in after.holds] == [middle.hold_id, late.hold_id]
    balance = await admin.get_balance(user)
    assert balance.held_micros == sum(h.amount_micros for h in after.holds)

    with pytest.raises(errors.AccountNotFound):
        await admin.list_holds(new_user())
    for bad in ({"page_size": limits.PAGE_SIZE_MAX + 1}, {"page_token": "not-a-token"}):
        with pytest.raises(errors.InvalidArgument):
            await admin.list_holds(user, **bad)  # type: ignore[arg-type]
    with pytest.raises(errors.PermissionDenied):
        await agent.list_holds(user)


async def test_daily_totals_match_the_history_and_rank_agents_by_spend(
    admin: AsyncCreditWalletClient, agent: AsyncCreditWalletClient, ledger: Ledger
) -> None:
    users = [new_user(), new_user()]
    await admin.set_agent_price("daily-x", 2 * CREDIT)
    await admin.set_agent_price("daily-y", CREDIT)
    await admin.set_agent_price("daily-z", CREDIT // 2)
    for user in users:
        await agent.ensure_account(user)
        await admin.grant(user, 100 * CREDIT, pb.LOT_SOURCE_TOP_UP)
    await agent.debit(users[0], agent_id="daily-x", quantity=3)  # 6 credits
    for _ in range(6):
        await agent.debit(users[1], agent_id="daily-y")  # 6 credits: a tie with daily-x
    in_ten_days = ledger.clock.now() + dt.timedelta(days=10)
    await admin.grant(users[0], 7 * CREDIT, pb.LOT_SOURCE_PROMO, expires_at=in_ten_days)
    # Five weeks later: the first day is out of a 30-day window, the promo lot has expired.
    ledger.clock.advance(days=35)
    for user in users:
        await agent.debit(user, agent_id="daily-z")
    await agent.debit(users[0], amount_micros=CREDIT)  # no agent: not ranked

    reply = await admin.get_daily_totals()
    today = ledger.clock.now().date()
    start = today - dt.timedelta(days=limits.DAILY_TOTALS_DAYS_DEFAULT - 1)
    assert (reply.start_date, reply.end_date) == (start.isoformat(), today.isoformat())
    oracle: dict[tuple[str, int], list[int]] = collections.defaultdict(lambda: [0, 0])
    spent: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for user in users:
        for row in await _all_rows(admin, user):
            day = row.created_at.ToDatetime(dt.UTC).date()
            if day < start:
                continue
            oracle[(day.isoformat(), row.type)][0] += 1
            oracle[(day.isoformat(), row.type)][1] += row.amount_micros
            if row.type == pb.TRANSACTION_TYPE_DEBIT and row.agent_id:
                spent[row.agent_id][0] += 1
                spent[row.agent_id][1] -= row.amount_micros
    got = {(t.date, t.type): [t.count, t.amount_micros] for t in reply.totals}
    assert got == oracle
    assert any(t == pb.TRANSACTION_TYPE_EXPIRE for _, t in got)
    assert not any(date < start.isoformat() for date, _ in got)
    assert [(a.agent_id, a.debits, a.spent_micros) for a in reply.top_agents] == [
        ("daily-z", 2, CREDIT)
    ]
    assert [(a.agent_id, [a.debits, a.spent_micros]) for a in reply.top_agents] == sorted(
        spent.items(), key=lambda item: (-item[1][1], item[0])
    )

    # A window long enough to see the first day: the tie is broken by agent_id.
    wide = await admin.get_daily_totals(days=40, top_agents=2)
    assert [(a.agent_id, a.spent_micros) for a in wide.top_agents] == [
        ("daily-x", 6 * CREDIT),
        ("daily-y", 6 * CREDIT),
    ]
    one = await admin.get_daily_totals(days=1)
    assert {t.date for t in one.totals} == {today.isoformat()}

    for bad in (
        {"days": limits.DAILY_TOTALS_DAYS_MAX + 1},
        {"days": -1},
        {"top_agents": limits.TOP_AGENTS_MAX + 1},
    ):
        with pytest.raises(errors.InvalidArgument) as refused:
            await admin.get_daily_totals(**bad)
        assert refused.value.field in bad
