"""The set-based batch: one database call applies a whole batch, and a batch of many debits
ends exactly as the same debits applied one by one, refusals, overdrafts, member caps,
restricted lots and streak rewards included."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import random
from typing import Any, cast

import pytest
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.server import db, errors
from creditwallet.server.ledger import batching, lots, streaks
from creditwallet.server.ledger.batching import Answer, DebitBatcher
from creditwallet.server.ledger.debit import DebitCommand, DebitResult
from creditwallet.server.ledger.idempotency import Guard, Outcome
from creditwallet.v1 import common_pb2 as pb

from tests.harness import Ledger, new_user

pytestmark = pytest.mark.usefixtures("verified")

TRIAL = 5_000_000  # what ensure_account grants


def command(user: str, request_id: str, **fields: Any) -> DebitCommand:
    values: dict[str, Any] = {
        "amount_micros": None,
        "agent_id": None,
        "quantity": None,
        "session_id": "",
        "metadata": {},
    }
    values.update(fields)
    for_agent = values.pop("for_agent_id", None)
    member = values.pop("member_id", None)
    return DebitCommand(user, request_id, **values, for_agent_id=for_agent, member_id=member)


async def apply_together(ledger: Ledger, cmds: list[DebitCommand]) -> list[Answer]:
    """The commands as one group-commit batch, in the order given (one transaction)."""
    batcher = DebitBatcher(ledger.pool, ledger.clock)
    loop = asyncio.get_running_loop()
    items = [
        batching._Item(
            Guard(c.user_id, c.request_id, "Debit", hashlib.sha256(repr(c).encode()).digest()),
            c,
            loop.create_future(),
        )
        for c in cmds
    ]
    return await db.run_transaction(
        ledger.pool,
        lambda conn: batcher._apply(conn, items),
    )


def shape(answer: Answer) -> tuple[Any, ...]:
    """What a caller sees of an answer, without the ids that differ between twin accounts."""
    if isinstance(answer, errors.LedgerError):
        return ("refused", answer.reason, answer.message, tuple(sorted(answer.metadata.items())))
    assert isinstance(answer, Outcome)
    result = answer.result
    reward = (result.reward.milestone_days, result.reward.amount_micros) if result.reward else None
    figures = dataclasses.replace(result.balances, last_transaction_id=None)
    return ("applied", result.charged_micros, dataclasses.astuple(figures), reward)


async def test_the_burn_down_of_the_database_is_the_order_of_the_listings(
    ledger: Ledger,
) -> None:
    async with ledger.pool.acquire() as conn:
        body = await conn.fetchval("SELECT pg_get_functiondef('cw_take'::regproc)")
    assert f"ORDER BY {lots.ordered('l')}" in " ".join(body.split())


async def test_a_batch_sends_the_same_statements_for_one_debit_or_forty(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """Claims, locks, the debits, the streaks and the results: one statement each, whatever
    the batch's size (before, every debit of a batch was a round trip of its own)."""
    users = [new_user() for _ in range(42)]
    for user in users:
        await admin.ensure_account(user)

    async def statements(cmds: list[DebitCommand]) -> list[str]:
        sent: list[str] = []
        batcher = DebitBatcher(ledger.pool, ledger.clock)
        loop = asyncio.get_running_loop()
        items = [
            batching._Item(Guard(c.user_id, c.request_id, "Debit", b"d"), c, loop.create_future())
            for c in cmds
        ]

        def log(record: Any) -> None:
            sent.append(record.query)

        async with ledger.pool.acquire() as conn:
            await conn.fetchval("SELECT 1")  # the pool's own reset of a connection
            conn.add_query_logger(log)
            try:
                async with conn.transaction():
                    answers = await batcher._apply(cast(db.Connection, conn), items)
            finally:
                conn.remove_query_logger(log)
        assert all(isinstance(a, Outcome) for a in answers), answers
        return [" ".join(q.split())[:40] for q in sent]

    # The first use of a type on a connection costs asyncpg a look at the catalog, once.
    await statements([command(users[0], "warm", amount_micros=1_000)])
    one = await statements([command(users[1], "first", amount_micros=1_000)])
    forty = await statements(
        [command(u, f"first-{i:02}", amount_micros=1_000) for i, u in enumerate(users[2:])]
    )
    # BEGIN, the claims, the locks, the debits, the streaks (every one a first of its day),
    # the results, COMMIT.
    assert len(one) == len(forty) == 7, (one, forty)


async def test_a_streak_reward_is_spendable_by_the_next_debit_of_its_batch(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """The day's first debit completes a 3-day streak (a 1-credit reward); the next debit of
    the same batch needs that credit. The batch stops after the first for its streak."""
    user, other = new_user(), new_user()
    today = streaks.utc_day(ledger.clock.now())
    for u in (user, other):
        await admin.ensure_account(u)
    async with ledger.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO streaks (user_id, current_days, streak_start, last_active_day,"
            " longest_days, grace_day, updated_at) VALUES ($1, 2, $2, $3, 2, NULL, $4)",
            user,
            today - dt.timedelta(days=2),
            today - dt.timedelta(days=1),
            ledger.clock.now(),
        )
    answers = await apply_together(
        ledger,
        [
            command(user, "a-1", amount_micros=TRIAL),
            command(other, "b-1", amount_micros=1_000),
            command(user, "a-2", amount_micros=1_000_000),
        ],
    )
    first, _, second = answers
    assert isinstance(first, Outcome)
    assert first.result.reward is not None
    assert first.result.reward.milestone_days == 3
    assert first.result.balances.balance_micros == 1_000_000  # the reward, in its reply
    assert isinstance(second, Outcome), second
    assert second.result.balances.balance_micros == 0
    assert (await admin.get_balance(user)).balance_micros == 0


PRICE = 700_000


async def twins(admin: AsyncCreditWalletClient) -> tuple[list[str], list[str]]:
    """Two accounts for the batch and their twins for one by one: the second of each pair
    with an overdraft limit; both with credits restricted to one agent and a capped member."""
    together, alone = [new_user() for _ in range(2)], [new_user() for _ in range(2)]
    for pair in (together, alone):
        for index, user in enumerate(pair):
            await admin.ensure_account(user)
            await admin.grant(user, 2_000_000, pb.LOT_SOURCE_PROMO, agent_ids=["ds-ok"])
            await admin.set_member(user, "m1", cap_micros=2_500_000)
            if index == 1:
                await admin.set_overdraft_limit(user, 1_500_000)
    return together, alone


def random_debits(rng: random.Random, users: list[str], seq: int) -> list[DebitCommand]:
    cmds: list[DebitCommand] = []
    for n in range(rng.randint(1, 14)):
        user = users[rng.randrange(2)]
        fields: dict[str, Any] = {}
        if rng.random() < 0.4:
            fields["agent_id"] = rng.choice(["ds-ok", "ds-ok", "ds-off", "ds-none"])
            fields["quantity"] = rng.choice([None, 1, 2, 3])
        else:
            fields["amount_micros"] = rng.choice(
                [1, 250_000, 999_999, 1_000_000, 2_600_000, 4_500_000]
            )
            if rng.random() < 0.3:
                fields["for_agent_id"] = "ds-ok"
        if rng.random() < 0.3:
            fields["member_id"] = rng.choice(["m1", "m1", "nobody"])
        if rng.random() < 0.15 and cmds:  # a request_id sent twice
            cmds.append(cmds[-1])
            continue
        cmds.append(command(user, f"s{seq}-{n:02}", **fields))
    return cmds


async def test_a_batch_ends_as_the_same_debits_one_by_one(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    await admin.set_agent_price("ds-ok", PRICE)
    await admin.set_agent_price("ds-off", PRICE, active=False)
    rng = random.Random(16)
    applied = 0
    reasons: dict[str, int] = {}
    for seq in range(20):
        together, alone = await twins(admin)
        cmds = random_debits(rng, together, seq)
        twin = {together[0]: alone[0], together[1]: alone[1]}
        batched = await apply_together(ledger, cmds)
        one_by_one = [
            (await apply_together(ledger, [dataclasses.replace(c, user_id=twin[c.user_id])]))[0]
            for c in cmds
        ]
        seen = [shape(a) for a in batched]
        expected = [shape(a) for a in one_by_one]
        assert seen == expected, (seq, cmds)
        for a, b in zip(together, alone, strict=True):
            left, right = await admin.get_balance(a), await admin.get_balance(b)
            assert (left.balance_micros, left.debt_micros) == (
                right.balance_micros,
                right.debt_micros,
            ), (seq, cmds)
        applied += sum(s[0] == "applied" for s in seen)
        for s in seen:
            if s[0] == "refused":
                reasons[s[1]] = reasons.get(s[1], 0) + 1
    # The sequences reached every refusal a debit has, and applied plenty beside them.
    assert applied > 40, applied
    assert set(reasons) == {
        "AGENT_DISABLED",
        "AGENT_NOT_FOUND",
        "INSUFFICIENT_CREDITS",
        "MEMBER_CAP_EXCEEDED",
        "MEMBER_NOT_FOUND",
    }, reasons


async def test_a_debit_of_the_batch_is_all_or_nothing_when_its_lots_cannot_pay(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """A refused debit between two applied ones of the same account writes nothing: the
    account's history has the two, and the third sees the balance the first left."""
    user = new_user()
    await admin.ensure_account(user)
    answers = await apply_together(
        ledger,
        [
            command(user, "x-1", amount_micros=3_000_000),
            command(user, "x-2", amount_micros=2_000_001),
            command(user, "x-3", amount_micros=2_000_000),
        ],
    )
    kinds = [shape(a)[0:2] for a in answers]
    assert kinds == [
        ("applied", 3_000_000),
        ("refused", "INSUFFICIENT_CREDITS"),
        ("applied", 2_000_000),
    ]
    history = await admin.list_transactions(user, type=pb.TRANSACTION_TYPE_DEBIT)
    assert sorted(t.request_id for t in history.transactions) == ["x-1", "x-3"]
    assert isinstance(answers[2], Outcome)
    result = answers[2].result
    assert isinstance(result, DebitResult)
    assert result.balances.balance_micros == 0


async def test_a_batch_rerun_one_by_one_keeps_each_accounts_order(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """A malformed debit aborts its batch and the others are rerun alone: one account's
    debits still go in the batch's order (the first takes all 5 credits, the second is
    refused), never two at once racing for the account's lock."""
    await admin.set_agent_price("order-huge", 10**7)
    for attempt in range(5):
        user, other = new_user(), new_user()
        for u in (user, other):
            await admin.ensure_account(u)
        batcher = DebitBatcher(ledger.pool, ledger.clock)
        loop = asyncio.get_running_loop()
        cmds = [
            command(user, f"o{attempt}-1", amount_micros=TRIAL),
            command(user, f"o{attempt}-2", amount_micros=1_000_000),
            command(other, f"o{attempt}-3", agent_id="order-huge", quantity=999_999_999),
        ]
        items = [
            batching._Item(
                Guard(c.user_id, c.request_id, "Debit", hashlib.sha256(repr(c).encode()).digest()),
                c,
                loop.create_future(),
            )
            for c in cmds
        ]
        await batcher._run(list(items))
        first, second, bad = [item.future.result() for item in items]
        assert isinstance(first, Outcome), first
        assert isinstance(second, errors.LedgerError)
        assert second.reason == "INSUFFICIENT_CREDITS"
        assert isinstance(bad, errors.LedgerError)
        assert bad.reason == "INVALID_ARGUMENT"
