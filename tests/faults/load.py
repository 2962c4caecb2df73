"""Real load for the fault scenarios, and the audit that proves what it left behind.

The load is debits sent by the project's own client, each with a request_id of its own. A
debit whose answer is lost (UNAVAILABLE while the server or the database is down,
DEADLINE_EXCEEDED when the caller's deadline passed mid-commit) is sent again, identical, so
with the same request_id (a replay is answered, never applied twice) until it is answered
or its time budget runs out. The audit then reads the ledger directly: every acknowledged
debit is there exactly once, no request_id is applied twice, nothing was applied that was
never sent, and VerifyLedger reports no violation.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import random
import time
from collections.abc import Awaitable, Callable, Sequence

import asyncpg
import grpc
from creditwallet.client import errors as cw
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.v1 import common_pb2 as pb

from tests.harness import TOKENS

CREDIT = 1_000_000
DEBIT_MICROS = 1_000
# Codes after which the outcome is unknown and the same request_id is sent again.
RETRY_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
OP_BUDGET_SECONDS = 60.0
BACKOFF_SECONDS_MIN = 0.02
BACKOFF_SECONDS_MAX = 0.5


@dataclasses.dataclass(frozen=True)
class Op:
    user_id: str
    request_id: str


@dataclasses.dataclass
class Tally:
    """What the callers saw; ``acknowledged`` maps request_id to the transaction_id returned."""

    attempted: int = 0
    sends: int = 0
    acknowledged: dict[str, str] = dataclasses.field(default_factory=dict)
    replayed: int = 0
    gave_up: list[Op] = dataclasses.field(default_factory=list)
    codes: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)


@dataclasses.dataclass(frozen=True)
class Plan:
    ops: int
    concurrency: int
    pace_seconds: float  # pause between one caller's debits, so the fault lands mid-load


ClientFor = Callable[[int], AsyncCreditWalletClient]  # attempt number -> client to send with


async def fund(admin: AsyncCreditWalletClient, users: Sequence[str], credits: int) -> None:
    for user in users:
        await admin.ensure_account(user)
        await admin.grant(user, credits * CREDIT, pb.LOT_SOURCE_TOP_UP, request_id=f"fund-{user}")


def make_ops(prefix: str, users: Sequence[str], count: int) -> list[Op]:
    return [Op(users[i % len(users)], f"{prefix}-{i}") for i in range(count)]


async def debit_until_answered(client_for: ClientFor, op: Op, tally: Tally) -> None:
    rng = random.Random(op.request_id)
    deadline = time.monotonic() + OP_BUDGET_SECONDS
    for attempt in range(10_000):
        tally.sends += 1
        try:
            reply = await client_for(attempt).debit(
                op.user_id, amount_micros=DEBIT_MICROS, request_id=op.request_id
            )
        except cw.CreditWalletError as exc:
            tally.codes[exc.code.name] += 1
            if exc.code not in RETRY_CODES:
                raise
            if time.monotonic() > deadline:
                tally.gave_up.append(op)
                return
            ceiling = min(BACKOFF_SECONDS_MAX, BACKOFF_SECONDS_MIN * 2**attempt)
            await asyncio.sleep(rng.uniform(ceiling / 2, ceiling))
            continue
        tally.codes["OK"] += 1
        tally.acknowledged[op.request_id] = reply.transaction_id
        tally.replayed += reply.replayed
        return
    tally.gave_up.append(op)


async def run_load(client_for: ClientFor, ops: Sequence[Op], plan: Plan, tally: Tally) -> None:
    queue: collections.deque[Op] = collections.deque(ops)

    async def caller() -> None:
        while queue:
            op = queue.popleft()
            tally.attempted += 1
            await debit_until_answered(client_for, op, tally)
            await asyncio.sleep(plan.pace_seconds)

    await asyncio.gather(*(caller() for _ in range(plan.concurrency)))


async def when_acknowledged(tally: Tally, count: int, timeout_seconds: float = 60.0) -> None:
    """Wait (bounded) until the load has ``count`` acknowledgements: the moment to strike."""
    async with asyncio.timeout(timeout_seconds):
        while len(tally.acknowledged) < count:
            await asyncio.sleep(0.01)


async def with_fault(load: Awaitable[None], fault: Awaitable[None]) -> None:
    """Run the load and the fault together; both must finish."""
    await asyncio.gather(load, fault)


@dataclasses.dataclass
class Audit:
    found: dict[str, int]  # request_id -> debit rows in the ledger
    transaction_ids: dict[str, str]  # request_id -> its (first) debit's transaction_id
    violations: int
    violation_details: list[str]

    def applied_twice(self) -> list[str]:
        return [rid for rid, rows in self.found.items() if rows != 1]


async def audit(dsn: str, admin: AsyncCreditWalletClient, prefix: str) -> Audit:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT request_id, count(*) AS n, sum(amount_micros) AS micros, "
            "min(transaction_id) AS transaction_id "
            "FROM credit_transactions WHERE type = 'debit' AND request_id LIKE $1 "
            "GROUP BY request_id",
            prefix + "-%",
        )
    finally:
        await conn.close()
    for row in rows:
        assert row["micros"] == -DEBIT_MICROS * row["n"], dict(row)
    report = await admin.verify_ledger()
    details = [f"{v.invariant} {v.user_id}: {v.detail}" for v in report.violations]
    return Audit(
        {r["request_id"]: r["n"] for r in rows},
        {r["request_id"]: str(r["transaction_id"]) for r in rows},
        len(report.violations),
        details,
    )


async def resolve(admin: AsyncCreditWalletClient, tally: Tally) -> None:
    """Give every debit whose caller gave up its answer now, with the same request_id."""
    for op in tally.gave_up:
        reply = await admin.debit(op.user_id, amount_micros=DEBIT_MICROS, request_id=op.request_id)
        tally.acknowledged[op.request_id] = reply.transaction_id


def check(name: str, ops: Sequence[Op], tally: Tally, result: Audit, record: list[str]) -> None:
    """Record the scenario's one-line figures (first, so a failure shows them), then assert."""
    sent = {op.request_id for op in ops}
    acknowledged = set(tally.acknowledged)
    line = (
        f"{name}: attempted={tally.attempted} acknowledged={len(acknowledged)} "
        f"found_in_ledger={len(result.found)} applied_twice={len(result.applied_twice())} "
        f"invariant_violations={result.violations} "
        f"(sends={tally.sends} replayed={tally.replayed} gave_up={len(tally.gave_up)} "
        f"codes={dict(sorted(tally.codes.items()))})"
    )
    record.append(line)
    assert tally.attempted == len(ops), line
    assert not result.applied_twice(), (line, result.applied_twice()[:5])
    assert acknowledged <= set(result.found), (line, sorted(acknowledged - set(result.found))[:5])
    assert set(result.found) <= sent, line
    mismatched = [r for r in acknowledged if tally.acknowledged[r] != result.transaction_ids[r]]
    assert not mismatched, (line, mismatched[:5])  # the answer named the row in the ledger
    assert acknowledged == sent, line  # every debit got its answer in the end
    assert result.violations == 0, (line, result.violation_details[:5])


def client(
    target: str, scope: str = "admin", timeout_seconds: float = 5.0
) -> AsyncCreditWalletClient:
    """A client with no retries of its own: the scenarios retry, and count, themselves."""
    return AsyncCreditWalletClient(
        target, TOKENS[scope], retries=0, timeout_seconds=timeout_seconds
    )


def assert_no_secrets(text: str, where: str) -> None:
    """No configured token may appear in a log: secrets are never logged."""
    for scope, token in TOKENS.items():
        assert token not in text, f"the {scope} token appears in {where}"
