"""Keyset pagination under concurrent writes, and the seed's operator queries unmodified."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from creditwallet.client import debitfile
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.core import limits
from creditwallet.server.ledger import stats
from creditwallet.v1 import common_pb2 as pb
from creditwallet.v1 import events_pb2 as epb
from creditwallet.v1 import wallet_service_pb2 as wpb

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


def _fat(user: str, n: int) -> wpb.DebitRequest:
    """A valid debit with every metadata entry at its limit: about 9.8 KB in the history."""
    key = limits.METADATA_KEY_LENGTH_MAX - 2
    return wpb.DebitRequest(
        user_id=user,
        request_id=f"fat-{n}-" + "r" * 100,
        amount_micros=1,
        metadata={
            f"{k:02d}" + "k" * key: "v" * limits.METADATA_VALUE_LENGTH_MAX
            for k in range(limits.METADATA_KEYS_MAX)
        },
    )


async def test_a_page_of_large_rows_ends_early_and_the_token_goes_on(
    admin: AsyncCreditWalletClient, agent: AsyncCreditWalletClient
) -> None:
    """500 rows of full metadata are more than an answer may be: pages end by bytes too."""
    user = new_user()
    await admin.ensure_account(user)
    debits = [_fat(user, n) for n in range(limits.PAGE_SIZE_MAX)]
    for chunk in debitfile.chunks(debits):
        await agent.batch_debit(chunk)
    seen: list[str] = []
    token, pages = "", []
    while True:
        page = await admin.list_transactions(
            user, type=pb.TRANSACTION_TYPE_DEBIT, page_size=limits.PAGE_SIZE_MAX, page_token=token
        )
        assert page.ByteSize() <= limits.PAGE_BYTES_MAX + 100
        pages.append(len(page.transactions))
        seen += [t.request_id for t in page.transactions]
        token = page.next_page_token
        if not token:
            break
    assert len(pages) == 2
    assert pages[0] < limits.PAGE_SIZE_MAX
    assert len(seen) == len(set(seen))  # each row once (a batch's order is unspecified)
    assert set(seen) == {d.request_id for d in debits}
    # The events of those debits carry the metadata too: the same holds for ListEvents.
    events: list[str] = []
    token, event_pages = "", 0
    while True:
        listed = await admin.admin.ListEvents(
            epb.ListEventsRequest(
                user_id=user, types=["credits.debited"], page_size=500, page_token=token
            )
        )
        assert listed.ByteSize() <= limits.PAGE_BYTES_MAX + 100
        events += [e.event_id for e in listed.events]
        event_pages += 1
        token = listed.next_page_token
        if not token:
            break
    assert event_pages > 1
    assert len(events) == len(set(events)) == limits.PAGE_SIZE_MAX


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
