"""Keyset pagination under concurrent writes, and the seed's operator queries unmodified."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.server.ledger import stats
from creditwallet.v1 import common_pb2 as pb

from tests.harness import Ledger, new_user

pytestmark = pytest.mark.usefixtures("verified")


async def test_pages_have_no_gaps_or_repeats_while_debits_are_written(
    admin: AsyncCreditWalletClient, ledger: Ledger
) -> None:
    user = new_user()
    await admin.ensure_account(user)
    await admin.grant(user, 1_000_000_000, pb.LOT_SOURCE_TOP_UP)
    for i in range(120):
        await admin.debit(user, amount_micros=1_000, request_id=f"before-{i}")
    before = {
        t.transaction_id for t in (await admin.list_transactions(user, page_size=500)).transactions
    }
    writer_client = ledger.client("agent")
    stop = asyncio.Event()

    async def writer() -> int:
        n = 0
        while not stop.is_set():
            await writer_client.debit(user, amount_micros=1_000, request_id=f"during-{n}")
            n += 1
        return n

    task = asyncio.create_task(writer())
    seen: list[str] = []
    token = ""
    while True:
        page = await admin.list_transactions(user, page_size=7, page_token=token)
        seen.extend(t.transaction_id for t in page.transactions)
        await asyncio.sleep(0.001)
        token = page.next_page_token
        if not token:
            break
    stop.set()
    written = await task
    assert written > 0
    assert len(seen) == len(set(seen)), "a row appeared twice"
    assert before <= set(seen), "a row that existed before paging was skipped"
    ids = [int(i) for i in seen]
    assert ids == sorted(ids, reverse=True), "newest first"


async def test_type_filter_and_token_bound_to_its_filter(admin: AsyncCreditWalletClient) -> None:
    user = new_user()
    await admin.ensure_account(user)
    for _ in range(3):
        await admin.debit(user, amount_micros=1_000)
    debits = await admin.list_transactions(user, page_size=2, type=pb.TRANSACTION_TYPE_DEBIT)
    assert [t.type for t in debits.transactions] == [pb.TRANSACTION_TYPE_DEBIT] * 2
    assert debits.next_page_token
    from creditwallet.client import errors as cw

    with pytest.raises(cw.InvalidArgument):
        await admin.list_transactions(user, page_token=debits.next_page_token)


async def test_seed_operator_queries_run_unmodified_and_return_credits(
    admin: AsyncCreditWalletClient, ledger: Ledger
) -> None:
    user = new_user()
    await admin.ensure_account(user)
    await admin.debit(user, amount_micros=1_500_000)
    async with ledger.pool.acquire() as conn:
        totals = await conn.fetchrow(stats.SEED_TOTALS)
        by_type = {r["type"]: r for r in await conn.fetch(stats.SEED_LAST_DAY)}
        user_balance = await conn.fetchval("SELECT balance FROM credits WHERE user_id = $1", user)
    assert user_balance == Decimal("3.5")
    assert totals is not None
    assert isinstance(totals["total_credits"], Decimal)
    assert by_type["debit"]["total_amount"] <= Decimal("-1.5")
    reply = await admin.get_stats()
    assert reply.total_users == totals["total_users"]
    assert reply.total_credits_micros == int(totals["total_credits"] * 1_000_000)
    debit_row = next(t for t in reply.last_day if t.type == pb.TRANSACTION_TYPE_DEBIT)
    assert debit_row.total_amount_micros == int(by_type["debit"]["total_amount"] * 1_000_000)
