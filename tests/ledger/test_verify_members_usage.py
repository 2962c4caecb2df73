"""VerifyLedger's invariants 9 (member caps) and 10 (usage rollups): each tampered row caught.

Each scenario writes through the real server, then tampers one row inside a transaction of
the schema's owner, runs the ledger check on that connection (which sees the tampering),
and rolls back, so the database stays clean for the other tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.server import db
from creditwallet.server.ledger import verify
from creditwallet.v1 import common_pb2 as pb

from tests.harness import Ledger, new_user

pytestmark = pytest.mark.usefixtures("verified")

CREDIT = 1_000_000


class _Rollback(Exception):
    pass


@pytest_asyncio.fixture(loop_scope="session")
async def owner(ledger: Ledger) -> AsyncIterator[asyncpg.Connection[asyncpg.Record]]:
    conn = await asyncpg.connect(db.dsn_with(ledger.dsn, user=db.OWNER_ROLE))
    try:
        yield conn
    finally:
        await conn.close()


async def violations_after(
    conn: asyncpg.Connection[asyncpg.Record], tamper: str, *args: object
) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    try:
        async with conn.transaction():
            await conn.execute(tamper, *args)
            _, violations = await verify.verify(conn)  # type: ignore[arg-type]
            found = [(v.invariant, v.detail) for v in violations]
            raise _Rollback
    except _Rollback:
        pass
    return found


async def scenario(admin: AsyncCreditWalletClient, agent: AsyncCreditWalletClient) -> str:
    user = new_user()
    await admin.grant(
        user, source=pb.LOT_SOURCE_PROMO, amount_micros=100 * CREDIT, create_account=True
    )
    await admin.set_member(user, "m", cap_micros=5 * CREDIT, cap_period="day")
    debit = await agent.debit(user, amount_micros=3 * CREDIT, member_id="m", session_id="s")
    await agent.authorize(user, amount_micros=CREDIT, member_id="m")
    await admin.reverse_debit(user, debit.transaction_id, amount_micros=CREDIT)
    await agent.debit(user, amount_micros=2 * CREDIT, member_id="m", session_id="s")
    return user


async def test_the_untampered_ledger_is_clean(
    admin: AsyncCreditWalletClient,
    agent: AsyncCreditWalletClient,
    owner: asyncpg.Connection[asyncpg.Record],
) -> None:
    await scenario(admin, agent)
    assert await violations_after(owner, "SELECT 1") == []


@pytest.mark.parametrize(
    ("tamper", "invariant", "words"),
    [
        # A cap lowered in the record of changes: the debits made under it now exceed it.
        ("UPDATE member_changes SET cap_micros = 1 WHERE user_id = $1", 9, "over the cap"),
        # The member recorded as inactive when it spent.
        ("UPDATE member_changes SET active = false WHERE user_id = $1", 9, "inactive"),
        # A debit of a member that was never set.
        (
            "UPDATE credit_transactions SET member_id = 'ghost' WHERE user_id = $1 "
            "AND transaction_id = (SELECT max(transaction_id) FROM credit_transactions "
            "WHERE user_id = $1 AND type = 'debit')",
            9,
            "never set",
        ),
        # The counters the cap check reads, off by one micro.
        ("UPDATE member_spend SET spent_micros = spent_micros - 1 WHERE user_id = $1", 9, "spent"),
        ("UPDATE member_spend SET held_micros = 0 WHERE user_id = $1", 9, "held"),
        # The rollups GetUsage reads.
        ("UPDATE usage_daily SET debited_micros = debited_micros + 1 WHERE user_id = $1", 10, ""),
        ("UPDATE usage_sessions SET reversals = 0 WHERE user_id = $1", 10, ""),
        ("DELETE FROM usage_sessions WHERE user_id = $1", 10, "usage_sessions"),
        (
            "INSERT INTO usage_daily VALUES ($1, '2001-01-01', 'x', '', 5, 0, 1, 0)",
            10,
            "usage_daily",
        ),
    ],
)
async def test_a_tampered_row_is_caught(
    admin: AsyncCreditWalletClient,
    agent: AsyncCreditWalletClient,
    owner: asyncpg.Connection[asyncpg.Record],
    tamper: str,
    invariant: int,
    words: str,
) -> None:
    user = await scenario(admin, agent)
    found = await violations_after(owner, tamper, user)
    mine = [detail for number, detail in found if number == invariant]
    assert mine, found
    assert any(words in detail for detail in mine), mine
