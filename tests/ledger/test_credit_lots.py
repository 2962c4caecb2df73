"""Priority, restricted credits and overdraft, against the real server and database.

Every scenario ends with VerifyLedger clean. Figures are read back through GetBalance (each
lot's remaining) and the history, so a wrong burn-down order shows as a wrong lot.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import asyncpg
import creditwallet.client.errors as cw
import pytest
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.v1 import billing_service_pb2 as bpb
from creditwallet.v1 import common_pb2 as pb
from creditwallet.v1 import wallet_service_pb2 as wpb

from tests.harness import Ledger, new_user

pytestmark = pytest.mark.usefixtures("verified")

CREDIT = 1_000_000


async def account(admin: AsyncCreditWalletClient) -> str:
    """An account without a trial lot, so every lot is the test's own."""
    user = new_user()
    await admin.grant(user, CREDIT, pb.LOT_SOURCE_ADJUSTMENT, create_account=True)
    await admin.debit(user, amount_micros=CREDIT)
    return user


async def remaining(admin: AsyncCreditWalletClient, user: str) -> dict[str, int]:
    """Each live lot's remaining micros, by lot_id."""
    state = await admin.get_balance(user)
    return {lot.lot_id: lot.remaining_micros for g in state.lots for lot in g.lots}


async def grant(
    admin: AsyncCreditWalletClient,
    user: str,
    credits: int,
    *,
    priority: int | None = None,
    agents: tuple[str, ...] = (),
    expires_at: dt.datetime | None = None,
    source: pb.LotSource.ValueType = pb.LOT_SOURCE_PROMO,
) -> str:
    reply = await admin.grant(
        user,
        credits * CREDIT,
        source,
        priority=priority,
        agent_ids=agents,
        expires_at=expires_at,
    )
    return reply.lot.lot_id


# --- priority ---------------------------------------------------------------------------


async def test_priority_burns_first_then_the_soonest_expiry_then_the_oldest_grant(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    user = await account(admin)
    soon = ledger.clock.now() + dt.timedelta(days=3)
    old = await grant(admin, user, 1)  # default 50, never expires, oldest
    ledger.clock.advance(seconds=1)
    new = await grant(admin, user, 1)  # default 50, never expires, newer
    expiring = await grant(admin, user, 1, expires_at=soon)  # default 50, expires
    urgent = await grant(admin, user, 1, priority=10)  # never expires, but priority 10
    late = await grant(admin, user, 1, priority=90, expires_at=soon)
    order: list[str] = []
    for _ in range(5):
        before = await remaining(admin, user)
        await admin.debit(user, amount_micros=CREDIT)
        after = await remaining(admin, user)
        order.extend(lot for lot in before if lot not in after)
    assert order == [urgent, expiring, old, new, late]


async def test_balance_lists_lots_with_priority_and_agents_in_burn_down_order(
    admin: AsyncCreditWalletClient,
) -> None:
    user = await account(admin)
    a = await grant(admin, user, 1, priority=70)
    b = await grant(
        admin, user, 1, priority=5, agents=("writer", "coder"), source=pb.LOT_SOURCE_TOP_UP
    )
    c = await grant(admin, user, 1, priority=40)
    state = await admin.get_balance(user)
    lots = [lot for g in state.lots for lot in g.lots]
    by_id = {lot.lot_id: lot for lot in lots}
    assert (by_id[b].priority, list(by_id[b].agent_ids)) == (5, ["coder", "writer"])
    assert (by_id[a].priority, list(by_id[a].agent_ids)) == (70, [])
    # Groups by source in first-use order; within a group, burn-down order.
    assert [g.source for g in state.lots] == [pb.LOT_SOURCE_TOP_UP, pb.LOT_SOURCE_PROMO]
    assert [lot.lot_id for lot in state.lots[1].lots] == [c, a]


@pytest.mark.parametrize("priority", [-1, 101])
async def test_a_priority_out_of_range_is_refused_and_grants_nothing(
    admin: AsyncCreditWalletClient, priority: int
) -> None:
    user = await account(admin)
    with pytest.raises(cw.InvalidArgument) as refused:
        await admin.grant(user, CREDIT, pb.LOT_SOURCE_PROMO, priority=priority)
    assert refused.value.field == "priority"
    assert (await admin.get_balance(user)).available_micros == 0


async def test_priority_zero_is_kept_and_not_the_default(admin: AsyncCreditWalletClient) -> None:
    user = await account(admin)
    lot = await admin.grant(user, CREDIT, pb.LOT_SOURCE_PROMO, priority=0)
    assert lot.lot.priority == 0
    default = await admin.grant(user, CREDIT, pb.LOT_SOURCE_PROMO)
    assert default.lot.priority == 50


async def test_a_purchase_may_set_its_lot_priority(admin: AsyncCreditWalletClient) -> None:
    user = new_user()
    await admin.ensure_account(user)  # with its trial lot
    await admin.billing.RecordPurchase(
        bpb.RecordPurchaseRequest(
            request_id=f"evt-{user}",
            user_id=user,
            purchase_id=f"cs-{user}",
            payment_id=f"pi-{user}",
            price_id="price_cw_topup_100",
            credits_micros=100 * CREDIT,
            amount_paid_minor=499,
            currency="usd",
            priority=20,
        )
    )
    state = await admin.get_balance(user)
    lots = {lot.source: lot for g in state.lots for lot in g.lots}
    assert lots[pb.LOT_SOURCE_TOP_UP].priority == 20
    # Priority 20 burns before the trial lot, though the trial expires and the top-up never.
    await admin.debit(user, amount_micros=CREDIT)
    after = {lot.source: lot for g in (await admin.get_balance(user)).lots for lot in g.lots}
    assert after[pb.LOT_SOURCE_TOP_UP].remaining_micros == 99 * CREDIT
    assert after[pb.LOT_SOURCE_TRIAL].remaining_micros == lots[pb.LOT_SOURCE_TRIAL].remaining_micros


# --- restricted credits -------------------------------------------------------------------


async def price(admin: AsyncCreditWalletClient, agent_id: str, credits: int = 1) -> None:
    await admin.set_agent_price(agent_id, credits * CREDIT)


async def test_a_debit_for_an_agent_burns_only_lots_that_apply_to_it(
    admin: AsyncCreditWalletClient,
) -> None:
    await price(admin, "lots-writer")
    await price(admin, "lots-coder")
    user = await account(admin)
    writer = await grant(admin, user, 2, priority=10, agents=("lots-writer",))
    coder = await grant(admin, user, 2, priority=10, agents=("lots-coder",))
    anyone = await grant(admin, user, 1)
    await admin.debit(user, agent_id="lots-writer", quantity=2)
    assert await remaining(admin, user) == {coder: 2 * CREDIT, anyone: CREDIT}
    await admin.debit(user, agent_id="lots-writer")  # falls through to the unrestricted lot
    assert await remaining(admin, user) == {coder: 2 * CREDIT}
    with pytest.raises(cw.InsufficientCredits) as refused:
        await admin.debit(user, agent_id="lots-writer")
    # Available for that agent: nothing, although the account holds 2 credits.
    assert (refused.value.available_micros, refused.value.required_micros) == (0, CREDIT)
    assert (await admin.get_balance(user)).available_micros == 2 * CREDIT
    await admin.debit(user, agent_id="lots-coder", quantity=2)
    assert writer not in await remaining(admin, user)


async def test_an_amount_names_its_agent_with_for_agent_id_and_without_one_burns_only_free_lots(
    admin: AsyncCreditWalletClient,
) -> None:
    user = await account(admin)
    restricted = await grant(admin, user, 3, agents=("lots-a",))
    with pytest.raises(cw.InsufficientCredits) as refused:
        await admin.debit(user, amount_micros=CREDIT)
    assert refused.value.available_micros == 0
    await admin.debit(user, amount_micros=CREDIT, for_agent_id="lots-a")
    assert await remaining(admin, user) == {restricted: 2 * CREDIT}
    row = (await admin.list_transactions(user, page_size=1)).transactions[0]
    assert (row.agent_id, row.quantity, row.amount_micros) == ("lots-a", 0, -CREDIT)


async def test_for_agent_id_goes_with_an_amount_only(admin: AsyncCreditWalletClient) -> None:
    user = await account(admin)
    await price(admin, "lots-b")
    with pytest.raises(cw.InvalidArgument) as refused:
        await admin.debit(user, agent_id="lots-b", for_agent_id="lots-b")
    assert refused.value.field == "for_agent_id"
    with pytest.raises(cw.InvalidArgument):
        await admin.debit(user, amount_micros=1, for_agent_id="not an id!")
    with pytest.raises(cw.InvalidArgument) as bad:
        await admin.grant(user, CREDIT, pb.LOT_SOURCE_PROMO, agent_ids=["ok", "bad id"])
    assert bad.value.field == "agent_ids"
    with pytest.raises(cw.InvalidArgument):
        await admin.grant(user, CREDIT, pb.LOT_SOURCE_PROMO, agent_ids=[f"a{i}" for i in range(33)])
    assert (await admin.get_balance(user)).available_micros == 0


async def test_balance_for_an_agent_counts_the_lots_that_apply_to_it(
    admin: AsyncCreditWalletClient,
) -> None:
    user = await account(admin)
    await grant(admin, user, 2, agents=("lots-x",))
    await grant(admin, user, 3, agents=("lots-y",))
    await grant(admin, user, 1)
    state = await admin.get_balance(user, agent_id="lots-x")
    assert (state.available_micros, state.available_for_agent_micros) == (6 * CREDIT, 3 * CREDIT)
    assert (await admin.get_balance(user, agent_id="lots-z")).available_for_agent_micros == CREDIT
    assert not (await admin.get_balance(user)).HasField("available_for_agent_micros")


async def test_holds_reserve_applicable_lots_and_give_back_to_them(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    user = await account(admin)
    mine = await grant(admin, user, 2, priority=10, agents=("lots-h",))
    other = await grant(admin, user, 5, priority=10, agents=("lots-other",))
    free = await grant(admin, user, 1)
    with pytest.raises(cw.InsufficientCredits) as refused:
        await admin.authorize(user, amount_micros=4 * CREDIT, for_agent_id="lots-h")
    assert refused.value.available_micros == 3 * CREDIT
    hold = await admin.authorize(user, amount_micros=3 * CREDIT, for_agent_id="lots-h")
    assert await remaining(admin, user) == {other: 5 * CREDIT}
    captured = await admin.capture(user, hold.hold_id, amount_micros=2 * CREDIT)
    assert captured.released_micros == CREDIT
    # The capture spent the restricted lot first (burn-down order); the rest went back.
    assert await remaining(admin, user) == {other: 5 * CREDIT, free: CREDIT}
    second = await admin.authorize(user, amount_micros=CREDIT, for_agent_id="lots-h", ttl_seconds=5)
    assert await remaining(admin, user) == {other: 5 * CREDIT}
    ledger.clock.advance(seconds=6)  # the hold expires and gives back
    assert await remaining(admin, user) == {other: 5 * CREDIT, free: CREDIT}
    third = await admin.authorize(user, amount_micros=CREDIT, for_agent_id="lots-h")
    await admin.void(user, third.hold_id)
    assert await remaining(admin, user) == {other: 5 * CREDIT, free: CREDIT}
    debit = (await admin.list_transactions(user, type=pb.TRANSACTION_TYPE_DEBIT)).transactions
    assert debit[0].agent_id == "lots-h"
    assert mine not in await remaining(admin, user)
    assert second.hold_id


async def test_a_reversal_gives_back_to_the_restricted_lot_it_came_from(
    admin: AsyncCreditWalletClient,
) -> None:
    user = await account(admin)
    mine = await grant(admin, user, 2, priority=10, agents=("lots-r",))
    free = await grant(admin, user, 2)
    spent = await admin.debit(user, amount_micros=3 * CREDIT, for_agent_id="lots-r")
    assert await remaining(admin, user) == {free: CREDIT}
    await admin.reverse_debit(user, spent.transaction_id, amount_micros=CREDIT)
    # A partial reversal refills the longest-lived lot first (the reverse of burn-down).
    assert await remaining(admin, user) == {free: 2 * CREDIT}
    await admin.reverse_debit(user, spent.transaction_id)
    assert await remaining(admin, user) == {mine: 2 * CREDIT, free: 2 * CREDIT}


async def refund_all(admin: AsyncCreditWalletClient, user: str, credits: int) -> None:
    await admin.billing.RecordPurchase(
        bpb.RecordPurchaseRequest(
            request_id=f"evt-buy-{user}",
            user_id=user,
            purchase_id=f"cs-{user}",
            payment_id=f"pi-{user}",
            price_id="price_cw_topup_100",
            credits_micros=credits * CREDIT,
            amount_paid_minor=499,
            currency="usd",
        )
    )
    await admin.debit(user, amount_micros=credits * CREDIT)
    await admin.billing.RecordRefund(
        bpb.RecordRefundRequest(
            request_id=f"evt-refund-{user}", payment_id=f"pi-{user}", amount_refunded_minor=499
        )
    )


async def test_a_restricted_lot_never_pays_a_refunds_debt(admin: AsyncCreditWalletClient) -> None:
    user = await account(admin)
    await refund_all(admin, user, 4)
    assert (await admin.get_balance(user)).debt_micros == 4 * CREDIT
    restricted = await grant(admin, user, 10, agents=("lots-d",))
    state = await admin.get_balance(user, agent_id="lots-d")
    assert (state.debt_micros, state.available_for_agent_micros) == (4 * CREDIT, 6 * CREDIT)
    assert await remaining(admin, user) == {restricted: 10 * CREDIT}
    with pytest.raises(cw.AccountInDebt):  # no overdraft limit: any debt refuses debits
        await admin.debit(user, amount_micros=CREDIT, for_agent_id="lots-d")
    free = await grant(admin, user, 5)
    assert await remaining(admin, user) == {restricted: 10 * CREDIT, free: CREDIT}
    assert (await admin.get_balance(user)).debt_micros == 0
    await admin.debit(user, amount_micros=10 * CREDIT, for_agent_id="lots-d")


# --- overdraft ------------------------------------------------------------------------------


async def test_overdraft_takes_debits_down_to_minus_the_limit_as_debt(
    admin: AsyncCreditWalletClient,
) -> None:
    user = await account(admin)
    await grant(admin, user, 2)
    limit = await admin.set_overdraft_limit(user, 3 * CREDIT)
    assert (limit.limit_micros, limit.available_micros, limit.debt_micros) == (
        3 * CREDIT,
        2 * CREDIT,
        0,
    )
    spent = await admin.debit(user, amount_micros=4 * CREDIT)
    assert spent.available_micros == -2 * CREDIT
    state = await admin.get_balance(user)
    assert (state.debt_micros, state.overdraft_limit_micros) == (2 * CREDIT, 3 * CREDIT)
    assert not state.lots
    row = (await admin.list_transactions(user, page_size=1)).transactions[0]
    assert (row.amount_micros, row.overdraft_micros, row.balance_after_micros) == (
        -4 * CREDIT,
        2 * CREDIT,
        -2 * CREDIT,
    )
    with pytest.raises(cw.InsufficientCredits) as refused:
        await admin.debit(user, amount_micros=CREDIT + 1)
    assert (refused.value.available_micros, refused.value.overdraft_left_micros) == (
        -2 * CREDIT,
        CREDIT,
    )
    await admin.debit(user, amount_micros=CREDIT)  # exactly to -limit
    assert (await admin.get_balance(user)).available_micros == -3 * CREDIT
    with pytest.raises(cw.InsufficientCredits):
        await admin.debit(user, amount_micros=1)
    # Later credits pay the debt first.
    lot = await grant(admin, user, 5)
    state = await admin.get_balance(user)
    assert (state.available_micros, state.debt_micros) == (2 * CREDIT, 0)
    assert await remaining(admin, user) == {lot: 2 * CREDIT}


async def test_holds_never_overdraw(admin: AsyncCreditWalletClient) -> None:
    user = await account(admin)
    await grant(admin, user, 1)
    await admin.set_overdraft_limit(user, 10 * CREDIT)
    with pytest.raises(cw.InsufficientCredits) as refused:
        await admin.authorize(user, amount_micros=2 * CREDIT)
    assert refused.value.available_micros == CREDIT
    await admin.debit(user, amount_micros=3 * CREDIT)
    with pytest.raises(cw.InsufficientCredits):
        await admin.authorize(user, amount_micros=1)
    # In debt within the limit, a restricted lot can still be held for its agent.
    await grant(admin, user, 2, agents=("lots-hold",))
    hold = await admin.authorize(user, amount_micros=2 * CREDIT, for_agent_id="lots-hold")
    await admin.capture(user, hold.hold_id)
    assert (await admin.get_balance(user)).available_micros == -2 * CREDIT


async def test_refund_debt_beyond_the_limit_refuses_debits_and_within_it_does_not(
    admin: AsyncCreditWalletClient,
) -> None:
    user = await account(admin)
    await refund_all(admin, user, 4)
    await admin.set_overdraft_limit(user, 3 * CREDIT)
    with pytest.raises(cw.AccountInDebt) as refused:
        await admin.debit(user, amount_micros=1)
    assert refused.value.metadata["debt_micros"] == str(4 * CREDIT)
    await admin.set_overdraft_limit(user, 6 * CREDIT)
    await admin.debit(user, amount_micros=2 * CREDIT)
    with pytest.raises(cw.InsufficientCredits):
        await admin.debit(user, amount_micros=1)
    assert (await admin.get_balance(user)).debt_micros == 6 * CREDIT
    # Lowering the limit undoes nothing and refuses further debits until credits pay down.
    await admin.set_overdraft_limit(user, 0)
    with pytest.raises(cw.AccountInDebt):
        await admin.debit(user, amount_micros=1)
    await grant(admin, user, 7)
    await admin.debit(user, amount_micros=CREDIT)


async def test_reversing_an_overdraft_cancels_the_debt_or_refills_the_lot_that_paid_it(
    admin: AsyncCreditWalletClient,
) -> None:
    user = await account(admin)
    first = await grant(admin, user, 1)
    await admin.set_overdraft_limit(user, 5 * CREDIT)
    spent = await admin.debit(user, amount_micros=4 * CREDIT)  # 1 from the lot, 3 owed
    await admin.reverse_debit(user, spent.transaction_id, amount_micros=2 * CREDIT)
    state = await admin.get_balance(user)
    assert (state.debt_micros, state.available_micros) == (CREDIT, -CREDIT)
    paying = await grant(admin, user, 3)  # pays the 1 still owed
    assert await remaining(admin, user) == {paying: 2 * CREDIT}
    await admin.reverse_debit(user, spent.transaction_id)
    # The 1 the later lot paid goes back to it, the 1 of the first lot to the first lot.
    assert await remaining(admin, user) == {paying: 3 * CREDIT, first: CREDIT}
    with pytest.raises(cw.ReversalExceedsDebit):
        await admin.reverse_debit(user, spent.transaction_id, amount_micros=1)


async def test_overdraft_limit_validation(admin: AsyncCreditWalletClient) -> None:
    user = await account(admin)
    with pytest.raises(cw.InvalidArgument):
        await admin.set_overdraft_limit(user, -1)
    with pytest.raises(cw.InvalidArgument):
        await admin.set_overdraft_limit(user, 10**6 * CREDIT + 1)
    with pytest.raises(cw.AccountNotFound):
        await admin.set_overdraft_limit(new_user(), CREDIT)
    agent = await admin.set_overdraft_limit(user, 0)
    assert agent.limit_micros == 0


async def test_the_agent_scope_cannot_set_an_overdraft(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    user = await account(admin)
    with pytest.raises(cw.PermissionDenied):
        await ledger.client("agent").set_overdraft_limit(user, CREDIT)


# --- concurrency ----------------------------------------------------------------------------


async def test_debits_for_two_agents_racing_on_restricted_and_unrestricted_lots(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """Many debits for two agents at once, on lots of each and shared ones: each agent spends
    exactly what applies to it, and nothing is spent twice or by the wrong agent."""
    user = await account(admin)
    await grant(admin, user, 20, priority=10, agents=("race-x",))
    await grant(admin, user, 10, priority=10, agents=("race-y",))
    await grant(admin, user, 15)
    agent = ledger.client("agent")

    async def one(for_agent: str) -> str:
        try:
            await agent.debit(user, amount_micros=CREDIT, for_agent_id=for_agent)
            return for_agent
        except cw.InsufficientCredits:
            return "refused"

    outcomes = await asyncio.gather(*(one("race-x" if i % 2 else "race-y") for i in range(80)))
    x, y = outcomes.count("race-x"), outcomes.count("race-y")
    assert x + y == 45  # everything applicable was spent, nothing more
    assert 20 <= x <= 35
    assert 10 <= y <= 25
    assert (await admin.get_balance(user)).available_micros == 0
    rows = await _fetch(
        ledger,
        "SELECT t.agent_id, l.agent_ids, c.amount_micros FROM lot_consumptions c "
        "JOIN credit_transactions t USING (user_id, transaction_id) "
        "JOIN credit_lots l USING (user_id, lot_id) WHERE c.user_id = $1",
        user,
    )
    for row in rows:
        assert not row["agent_ids"] or row["agent_id"] in row["agent_ids"]
    spent: dict[str, int] = {}
    for row in rows:
        if row["agent_id"] is not None:  # not the setup's own debit
            spent[row["agent_id"]] = spent.get(row["agent_id"], 0) + row["amount_micros"]
    assert spent == {"race-x": x * CREDIT, "race-y": y * CREDIT}


async def test_overdraft_at_the_limit_under_many_concurrent_debits(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """Many debits at once against lots of 5 and a limit of 7: exactly 12 succeed, the
    account never goes below -limit, and its debt is the overdrafts'."""
    user = await account(admin)
    await grant(admin, user, 5)
    await admin.set_overdraft_limit(user, 7 * CREDIT)
    agent = ledger.client("agent")

    async def one() -> bool:
        try:
            await agent.debit(user, amount_micros=CREDIT)
            return True
        except cw.InsufficientCredits:
            return False

    outcomes = await asyncio.gather(*(one() for _ in range(40)))
    assert outcomes.count(True) == 12
    state = await admin.get_balance(user)
    assert (state.available_micros, state.debt_micros) == (-7 * CREDIT, 7 * CREDIT)
    lowest = await _fetch(
        ledger,
        "SELECT min(balance_after_micros) AS low FROM credit_transactions WHERE user_id = $1",
        user,
    )
    assert lowest[0]["low"] == -7 * CREDIT


async def test_batch_debits_share_one_overdraft_exactly(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    user = await account(admin)
    await grant(admin, user, 1)
    await admin.set_overdraft_limit(user, 2 * CREDIT)
    reply = await admin.wallet.BatchDebit(
        wpb.BatchDebitRequest(
            requests=[
                wpb.DebitRequest(user_id=user, request_id=f"b{i}", amount_micros=CREDIT)
                for i in range(5)
            ]
        )
    )
    assert [r.WhichOneof("outcome") for r in reply.results].count("debit") == 3
    assert (await admin.get_balance(user)).available_micros == -2 * CREDIT


async def _fetch(ledger: Ledger, query: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(ledger.dsn)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()
