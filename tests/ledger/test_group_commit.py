"""Group commit keeps every guarantee: batch-mates are independent, replays still replay."""

from __future__ import annotations

import asyncio

import pytest
from creditwallet.client import errors as cw
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.server import metrics
from creditwallet.v1 import common_pb2 as pb

from tests.harness import Ledger, new_user

pytestmark = pytest.mark.usefixtures("verified")


def batches() -> tuple[float, float]:
    """(debits committed in batches of more than one, batches rerun one by one)."""
    sizes = metrics.REGISTRY.get_sample_value("creditwallet_debit_batch_size_sum") or 0.0
    ones = (
        metrics.REGISTRY.get_sample_value("creditwallet_debit_batch_size_bucket", {"le": "1.0"})
        or 0.0
    )
    aborted = metrics.REGISTRY.get_sample_value("creditwallet_debit_batches_aborted_total") or 0.0
    return sizes - ones, aborted


async def test_concurrent_debits_are_committed_together(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    assert ledger.running.runtime.debits.batch_max > 1, "tests run with group commit on"
    users = [new_user() for _ in range(8)]
    for user in users:
        await admin.ensure_account(user)
    before, _ = batches()
    clients = [ledger.client("agent") for _ in range(8)]
    await asyncio.gather(
        *(clients[i % 8].debit(users[i % 8], amount_micros=1_000) for i in range(400))
    )
    after, _ = batches()
    assert after > before, "no debit shared a transaction"
    for user in users:
        assert (await admin.get_balance(user)).available_micros == 5_000_000 - 50 * 1_000


async def test_a_failing_debit_never_fails_its_batch_mates(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    user = new_user()
    await admin.ensure_account(user)
    await admin.grant(user, 100_000_000, pb.LOT_SOURCE_TOP_UP)
    # price x quantity overflows the per-request bound: found only inside the transaction.
    await admin.set_agent_price("huge", 10**7)
    _, aborted_before = batches()
    clients = [ledger.client("agent") for _ in range(8)]

    async def good(i: int) -> str:
        await clients[i % 8].debit(user, amount_micros=1_000, request_id=f"good-{i}")
        return "ok"

    async def bad(i: int) -> str:
        try:
            await clients[i % 8].debit(
                user, agent_id="huge", quantity=999_999_999, request_id=f"bad-{i}"
            )
        except cw.InvalidArgument:
            return "invalid"
        return "charged"

    jobs = [good(i) if i % 10 else bad(i) for i in range(300)]
    outcomes = await asyncio.gather(*jobs)
    assert outcomes.count("ok") == 270
    assert outcomes.count("invalid") == 30
    _, aborted_after = batches()
    assert aborted_after > aborted_before, "no batch had to be rerun: the case was not exercised"
    state = await admin.get_balance(user)
    assert state.available_micros == 105_000_000 - 270 * 1_000
    # The malformed debits left no record: the same request_id, fixed, is a fresh debit.
    fixed = await admin.debit(user, amount_micros=1_000, request_id="bad-0")
    assert not fixed.replayed


async def test_one_key_with_two_bodies_at_once_applies_one_and_refuses_the_other(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    user = new_user()
    await admin.ensure_account(user)
    clients = [ledger.client("agent") for _ in range(8)]

    async def send(i: int) -> tuple[int, str]:
        amount = 1_000 if i % 2 else 2_000
        try:
            reply = await clients[i % 8].debit(user, amount_micros=amount, request_id="twin")
        except cw.RequestIdReused:
            return amount, "reused"
        return amount, reply.transaction_id

    answers = await asyncio.gather(*(send(i) for i in range(40)))
    winners = {amount for amount, answer in answers if answer != "reused"}
    assert len(winners) == 1, answers  # one body won; every copy of the other was refused
    (won,) = winners
    assert {answer for amount, answer in answers if amount == won} != {"reused"}
    assert len({answer for amount, answer in answers if amount == won}) == 1
    assert all(answer == "reused" for amount, answer in answers if amount != won)
    assert (await admin.get_balance(user)).available_micros == 5_000_000 - won
