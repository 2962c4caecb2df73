"""BatchDebit: each debit of a call on its own, through the one debit route.

Each item is applied, replayed or refused exactly as a Debit with the same fields would be;
a bad item never fails the others; a batch raced against single Debits on the same accounts
applies every request_id at most once and never overdraws (VerifyLedger after every test).
"""

from __future__ import annotations

import asyncio
import random
import uuid

import pytest
from creditwallet.client import builders, debitfile
from creditwallet.client import errors as cw
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.core import limits
from creditwallet.v1 import common_pb2 as pb
from creditwallet.v1 import wallet_service_pb2 as wpb

from tests.harness import Ledger, new_user

pytestmark = pytest.mark.usefixtures("verified")

CREDIT = 1_000_000


def item(
    user: str,
    request_id: str,
    micros: int = CREDIT,
    session_id: str = "",
    metadata: dict[str, str] | None = None,
) -> wpb.DebitRequest:
    return wpb.DebitRequest(
        user_id=user,
        request_id=request_id,
        amount_micros=micros,
        session_id=session_id,
        metadata=metadata,
    )


def outcome(result: wpb.BatchDebitResult) -> str:
    """applied / replayed / the refusal's reason."""
    if result.WhichOneof("outcome") == "error":
        return result.error.reason
    return "replayed" if result.debit.replayed else "applied"


async def history(admin: AsyncCreditWalletClient, user: str) -> list[str]:
    page = await admin.list_transactions(user, type=pb.TRANSACTION_TYPE_DEBIT, page_size=500)
    return [t.request_id for t in page.transactions]


async def test_a_batch_mixing_good_refused_replayed_and_malformed_debits(
    admin: AsyncCreditWalletClient, agent: AsyncCreditWalletClient
) -> None:
    rich, poor, nobody = new_user(), new_user(), new_user()
    await admin.ensure_account(rich)  # the trial: 5 credits
    await admin.ensure_account(poor)
    await admin.set_agent_price("batch-agent", CREDIT // 4)
    earlier = await agent.debit(rich, amount_micros=CREDIT, request_id="before")
    requests = [
        item(rich, "a1"),  # applied
        item(poor, "p1", 3 * CREDIT),  # one of these two is applied, the other refused:
        item(poor, "p2", 3 * CREDIT),  # 2 credits are left (in either order)
        item(rich, "before"),  # a replay of the Debit above
        item(rich, "before", 2 * CREDIT),  # the same request_id with other fields
        item(nobody, "n1"),  # no such account
        item("bad user id!", "x1"),  # malformed user_id
        wpb.DebitRequest(user_id=rich, request_id="x2", agent_id="batch-agent", amount_micros=5),
        item(rich, ""),  # malformed: no request_id
        wpb.DebitRequest(user_id=rich, request_id="q1", agent_id="batch-agent", quantity=2),
        item(rich, "m1", session_id="s-9", metadata={"job": "render"}),
        item(rich, "a1"),  # the same request_id twice in one call: applied once
    ]
    reply = await agent.batch_debit(requests)

    results = reply.results
    poor_first = outcome(results[1]) == "applied"
    refused_at = 2 if poor_first else 1
    assert outcome(results[3 - refused_at]) == "applied"
    assert outcome(results[refused_at]) == "INSUFFICIENT_CREDITS"
    assert [outcome(r) for i, r in enumerate(results) if i not in (1, 2)] == [
        "applied",
        "replayed",
        "REQUEST_ID_REUSED",
        "ACCOUNT_NOT_FOUND",
        "INVALID_ARGUMENT",
        "INVALID_ARGUMENT",
        "INVALID_ARGUMENT",
        "applied",
        "applied",
        "replayed",
    ]
    assert results[3].debit.transaction_id == earlier.transaction_id
    assert results[11].debit.transaction_id == results[0].debit.transaction_id
    assert results[9].debit.charged_micros == CREDIT // 2  # priced: 2 x a quarter credit
    refused = cw.from_batch_error(results[refused_at].error)
    assert isinstance(refused, cw.InsufficientCredits)
    assert (refused.available_micros, refused.required_micros) == (2 * CREDIT, 3 * CREDIT)
    assert results[refused_at].error.code == "FAILED_PRECONDITION"
    assert {r.error.metadata["field"] for r in results[6:9]} == {
        "user_id",
        "amount_micros",
        "request_id",
    }
    assert isinstance(cw.from_batch_error(results[5].error), cw.AccountNotFound)

    # The ledger holds exactly the applied debits, with every field a Debit records.
    assert sorted(await history(admin, rich)) == ["a1", "before", "m1", "q1"]
    assert await history(admin, poor) == ["p1" if poor_first else "p2"]
    page = await admin.list_transactions(rich, type=pb.TRANSACTION_TYPE_DEBIT)
    m1 = next(t for t in page.transactions if t.request_id == "m1")
    assert (m1.session_id, dict(m1.metadata)) == ("s-9", {"job": "render"})
    balance = await admin.get_balance(rich)
    assert balance.available_micros == 5 * CREDIT - 3 * CREDIT - CREDIT // 2
    assert (await admin.get_balance(poor)).available_micros == 2 * CREDIT

    # The same call again: every stored outcome comes back, the malformed ones are refused
    # again (never stored), and nothing more is applied.
    again = await agent.batch_debit(requests)
    assert [outcome(r) for r in again.results] == [
        "replayed",
        "replayed" if poor_first else "INSUFFICIENT_CREDITS",
        "INSUFFICIENT_CREDITS" if poor_first else "replayed",
        "replayed",
        "REQUEST_ID_REUSED",
        "ACCOUNT_NOT_FOUND",
        "INVALID_ARGUMENT",
        "INVALID_ARGUMENT",
        "INVALID_ARGUMENT",
        "replayed",
        "replayed",
        "replayed",
    ]
    assert (await admin.get_balance(rich)).available_micros == balance.available_micros


async def test_a_stored_refusal_of_a_batch_is_what_a_later_debit_gets(
    admin: AsyncCreditWalletClient, agent: AsyncCreditWalletClient
) -> None:
    user = new_user()
    await admin.ensure_account(user)
    reply = await agent.batch_debit([item(user, "big", 6 * CREDIT)])
    assert outcome(reply.results[0]) == "INSUFFICIENT_CREDITS"
    await admin.grant(user, 10 * CREDIT, pb.LOT_SOURCE_TOP_UP)
    with pytest.raises(cw.InsufficientCredits):  # stored: a new request_id is needed
        await agent.debit(user, amount_micros=6 * CREDIT, request_id="big")


async def test_the_size_of_a_batch_is_bounded(
    admin: AsyncCreditWalletClient, agent: AsyncCreditWalletClient
) -> None:
    user = new_user()
    await admin.ensure_account(user)
    with pytest.raises(cw.InvalidArgument) as empty:
        await agent.batch_debit([])
    assert empty.value.field == "requests"
    too_many = [item(user, f"r{i}", 1) for i in range(limits.BATCH_DEBIT_ITEMS_MAX + 1)]
    with pytest.raises(cw.InvalidArgument) as big:
        await agent.batch_debit(too_many)
    assert big.value.field == "requests"
    assert await history(admin, user) == []  # refused whole: nothing applied
    full = await agent.batch_debit(too_many[:-1])
    assert len(full.results) == limits.BATCH_DEBIT_ITEMS_MAX
    assert all(outcome(r) == "applied" for r in full.results)
    balance = await admin.get_balance(user)
    assert balance.available_micros == 5 * CREDIT - limits.BATCH_DEBIT_ITEMS_MAX


def realistic(user: str) -> wpb.DebitRequest:
    """A debit as agent runtimes send them: UUID ids, an agent, a session, some metadata."""
    return wpb.DebitRequest(
        user_id=user,
        request_id=str(uuid.uuid4()),
        amount_micros=1,
        session_id=str(uuid.uuid4()),
        metadata={"model": "gpt-4o-mini", "trace_id": uuid.uuid4().hex},
    )


async def test_a_full_batch_of_realistic_debits_is_taken_and_a_larger_one_refused_whole(
    admin: AsyncCreditWalletClient, agent: AsyncCreditWalletClient
) -> None:
    user = new_user()
    await admin.ensure_account(user)
    full = [realistic(user) for _ in range(limits.BATCH_DEBIT_ITEMS_MAX)]
    size = builders.batch_debit(full).ByteSize()
    assert limits.GRPC_RECEIVE_BYTES_MAX < size <= limits.BATCH_DEBIT_BYTES_MAX
    reply = await agent.batch_debit(full)
    assert [outcome(r) for r in reply.results] == ["applied"] * limits.BATCH_DEBIT_ITEMS_MAX
    # Past the bound in bytes (few debits, much metadata): refused whole, nothing applied.
    heavy = [
        item(user, f"heavy-{n}", 1, metadata={f"k{k}": "v" * 512 for k in range(16)})
        for n in range(limits.BATCH_DEBIT_BYTES_MAX // (16 * 512) + 1)
    ]
    assert len(heavy) < limits.BATCH_DEBIT_ITEMS_MAX
    assert builders.batch_debit(heavy).ByteSize() > limits.BATCH_DEBIT_BYTES_MAX
    with pytest.raises(cw.ResourceExhausted):
        await agent.batch_debit(heavy)
    balance = await admin.get_balance(user)
    assert balance.available_micros == 5 * CREDIT - limits.BATCH_DEBIT_ITEMS_MAX
    # The client splits the same debits into calls the server takes.
    chunks = list(debitfile.chunks(heavy))
    assert [len(c) for c in chunks] != [len(heavy)]
    assert [r for c in chunks for r in c] == heavy
    for chunk in chunks:
        assert builders.batch_debit(chunk).ByteSize() <= limits.BATCH_DEBIT_BYTES_MAX
        sent = await agent.batch_debit(chunk)
        assert {outcome(r) for r in sent.results} == {"applied"}


async def test_a_debit_larger_than_other_methods_take_is_refused_unparsed(
    admin: AsyncCreditWalletClient, agent: AsyncCreditWalletClient
) -> None:
    """BatchDebit's bound is gRPC's: the gate holds every other method to its own."""
    user = new_user()
    await admin.ensure_account(user)
    metadata = {f"k{k}": "v" * 16_000 for k in range(8)}
    big = builders.debit(user, amount_micros=1, request_id="big-debit", metadata=metadata)
    assert limits.GRPC_RECEIVE_BYTES_MAX < big.ByteSize() <= limits.BATCH_DEBIT_BYTES_MAX
    with pytest.raises(cw.MessageTooLarge) as refused:
        await agent.debit(user, amount_micros=1, request_id="big-debit", metadata=metadata)
    assert refused.value.size_bytes == big.ByteSize()
    assert refused.value.size_bytes_max == limits.GRPC_RECEIVE_BYTES_MAX
    assert await history(admin, user) == []
    reply = await agent.debit(user, amount_micros=1, request_id="big-debit")  # id still free
    assert reply.charged_micros == 1


async def test_a_debit_of_a_batch_larger_than_debit_takes_is_refused_on_its_own(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """Padded past 64 KiB with a field the server does not know: Debit refuses it unparsed,
    so BatchDebit refuses it too, and applies its batch-mate."""
    user = new_user()
    await admin.ensure_account(user)
    padded = wpb.DebitRequest(user_id=user, request_id="padded", amount_micros=1)
    pad = b"p" * (limits.GRPC_RECEIVE_BYTES_MAX * 4)
    raw = padded.SerializeToString() + _varint((1999 << 3) | 2) + _varint(len(pad)) + pad
    padded = wpb.DebitRequest.FromString(raw)
    assert padded.ByteSize() > limits.GRPC_RECEIVE_BYTES_MAX
    agent = ledger.client("agent")
    reply = await agent.batch_debit([padded, item(user, "plain", 1)])
    first, second = reply.results
    assert outcome(first) == "MESSAGE_TOO_LARGE"
    assert first.error.metadata["size_bytes_max"] == str(limits.GRPC_RECEIVE_BYTES_MAX)
    assert outcome(second) == "applied"
    assert await history(admin, user) == ["plain"]


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def test_chunks_of_random_debits_never_pass_a_bound() -> None:
    rng = random.Random(7)
    for trial in range(10):
        debits = [
            wpb.DebitRequest(
                user_id="u" * limits.USER_ID_LENGTH_MAX,
                request_id=f"{trial}-{n}".ljust(rng.choice([8, 36, 128]), "x"),
                amount_micros=rng.randrange(1, 10**15),
                session_id="s" * rng.choice([0, 36, 128]),
                metadata={
                    f"{k}".ljust(64, "k"): "é" * rng.choice([0, 1, 100, 511, 512])
                    for k in range(rng.randrange(0, 17))
                },
            )
            for n in range(rng.randrange(1, 3000))
        ]
        chunks = list(debitfile.chunks(debits))
        assert [d for c in chunks for d in c] == debits
        for chunk in chunks:
            assert 1 <= len(chunk) <= limits.BATCH_DEBIT_ITEMS_MAX
            assert builders.batch_debit(chunk).ByteSize() <= limits.BATCH_DEBIT_BYTES_MAX


def test_chunks_keep_order_and_both_bounds() -> None:
    user = new_user()
    small = [item(user, f"s{n}", 1) for n in range(2 * limits.BATCH_DEBIT_ITEMS_MAX + 1)]
    assert [len(c) for c in debitfile.chunks(small)] == [1000, 1000, 1]
    mixed = [item(user, f"m{n}", 1, metadata={"k": "v" * (n * 7919 % 512)}) for n in range(3000)]
    chunks = list(debitfile.chunks(mixed))
    assert [r for c in chunks for r in c] == mixed
    for chunk in chunks:
        assert 1 <= len(chunk) <= limits.BATCH_DEBIT_ITEMS_MAX
        assert builders.batch_debit(chunk).ByteSize() <= limits.BATCH_DEBIT_BYTES_MAX
    assert list(debitfile.chunks([])) == []


async def test_a_batch_needs_the_agent_scope(ledger: Ledger) -> None:
    billing = ledger.client("billing")
    with pytest.raises(cw.PermissionDenied):
        await billing.wallet.BatchDebit(builders.batch_debit([item(new_user(), "r")]))


async def test_batches_raced_against_single_debits_on_the_same_accounts(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """Every request_id is sent both in a batch and as a single Debit, at the same moment, on
    accounts that cannot pay for all of them: each is applied once, both senders agree, and
    every account is drained exactly to zero."""
    users = [new_user() for _ in range(6)]
    for user in users:
        await admin.ensure_account(user)  # 5 credits each
    fits = 10  # half-credit debits each account can pay for
    ids = [(u, f"race-{u}-{i}") for u in users for i in range(3 * fits)]
    random.Random(16).shuffle(ids)
    agents = [ledger.client("agent") for _ in range(4)]

    async def single(n: int, user: str, rid: str) -> str:
        try:
            reply = await agents[n % 4].debit(user, amount_micros=CREDIT // 2, request_id=rid)
        except cw.CreditWalletError as exc:
            return exc.reason
        return reply.transaction_id

    async def batch(chunk: list[tuple[str, str]]) -> list[str]:
        reply = await agents[0].batch_debit([item(u, r, CREDIT // 2) for u, r in chunk])
        return [
            r.error.reason if r.WhichOneof("outcome") == "error" else r.debit.transaction_id
            for r in reply.results
        ]

    chunks = [ids[i : i + 45] for i in range(0, len(ids), 45)]
    singles = asyncio.gather(*(single(n, u, r) for n, (u, r) in enumerate(ids)))
    batched = asyncio.gather(*(batch(c) for c in chunks))
    single_answers, batch_answers = await asyncio.gather(singles, batched)

    from_batches = [a for chunk in batch_answers for a in chunk]
    assert from_batches == single_answers, "a request_id got two different outcomes"
    applied = [a for a in single_answers if a.isdigit()]
    assert len(applied) == len(set(applied)) == fits * len(users)
    assert set(single_answers) - set(applied) == {"INSUFFICIENT_CREDITS"}
    for user in users:
        assert (await admin.get_balance(user)).available_micros == 0
        assert len(await history(admin, user)) == fits


def test_a_batch_item_is_the_debit_request_itself() -> None:
    """Whatever field Debit gains, a batch item carries it: the item is DebitRequest."""
    field = wpb.BatchDebitRequest.DESCRIPTOR.fields_by_name["requests"]
    assert field.message_type is wpb.DebitRequest.DESCRIPTOR
    assert field.is_repeated
    debit = wpb.BatchDebitResult.DESCRIPTOR.fields_by_name["debit"]
    assert debit.message_type is wpb.DebitResponse.DESCRIPTOR
