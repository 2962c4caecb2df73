"""VerifyLedger's invariants 11 (applicability) and 12 (debt) catch tampered histories.

Each test builds a real account through the server, then tampers with one row inside a
transaction of its own, runs the ledger check on that transaction's view and rolls back: the
database is left as the server wrote it (and VerifyLedger clean after each test).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.server.ledger import verify
from creditwallet.v1 import common_pb2 as pb

from tests.harness import Ledger, new_user

pytestmark = pytest.mark.usefixtures("verified")

CREDIT = 1_000_000


@pytest_asyncio.fixture(loop_scope="session")
async def conn(ledger: Ledger) -> AsyncIterator[asyncpg.Connection[asyncpg.Record]]:
    connection = await asyncpg.connect(ledger.dsn)
    try:
        yield connection
    finally:
        await connection.close()


async def broken(conn: asyncpg.Connection[asyncpg.Record], user: str, tamper: str) -> set[int]:
    """The invariants that break for ``user`` once ``tamper`` ($1 = user) is applied."""
    tx = conn.transaction()
    await tx.start()
    try:
        _, clean = await verify.verify(conn)
        assert [v for v in clean if v.user_id == user] == []
        await conn.execute(tamper, user)
        _, found = await verify.verify(conn)
        return {v.invariant for v in found if v.user_id == user}
    finally:
        await tx.rollback()


async def account(admin: AsyncCreditWalletClient) -> str:
    user = new_user()
    await admin.grant(user, CREDIT, pb.LOT_SOURCE_ADJUSTMENT, create_account=True)
    await admin.debit(user, amount_micros=CREDIT)
    return user


async def test_a_restricted_lot_spent_for_another_agent_breaks_invariant_11(
    admin: AsyncCreditWalletClient, conn: asyncpg.Connection[asyncpg.Record]
) -> None:
    user = await account(admin)
    await admin.grant(user, 2 * CREDIT, pb.LOT_SOURCE_PROMO, agent_ids=["v-a"])
    await admin.debit(user, amount_micros=CREDIT, for_agent_id="v-a")
    assert 11 in await broken(
        conn, user, "UPDATE credit_lots SET agent_ids = '{v-b}' WHERE user_id = $1"
    )


async def test_a_restricted_lot_spent_by_a_debit_for_no_agent_breaks_invariant_11(
    admin: AsyncCreditWalletClient, conn: asyncpg.Connection[asyncpg.Record]
) -> None:
    user = await account(admin)
    await admin.grant(user, 2 * CREDIT, pb.LOT_SOURCE_PROMO)
    await admin.debit(user, amount_micros=CREDIT)
    assert 11 in await broken(
        conn,
        user,
        "UPDATE credit_lots SET agent_ids = '{v-c}' WHERE user_id = $1 AND source = 'promo'",
    )


async def test_a_pending_hold_on_another_agents_lot_breaks_invariant_11(
    admin: AsyncCreditWalletClient, conn: asyncpg.Connection[asyncpg.Record]
) -> None:
    user = await account(admin)
    await admin.grant(user, 2 * CREDIT, pb.LOT_SOURCE_PROMO, agent_ids=["v-h"])
    await admin.authorize(user, amount_micros=CREDIT, for_agent_id="v-h")
    assert await broken(conn, user, "UPDATE holds SET agent_id = 'v-z' WHERE user_id = $1") == {11}


async def overdrawn(admin: AsyncCreditWalletClient) -> str:
    """1 credit of lots, a limit of 3, a debit of 3: 2 owed on overdraft."""
    user = await account(admin)
    await admin.grant(user, CREDIT, pb.LOT_SOURCE_PROMO)
    await admin.set_overdraft_limit(user, 3 * CREDIT)
    await admin.debit(user, amount_micros=3 * CREDIT)
    return user


@pytest.mark.parametrize(
    "tamper",
    [
        # The overdraft left more debt than its limit allowed.
        "UPDATE debit_overdrafts SET debt_after_micros = 4000000 WHERE user_id = $1",
        # It claims a limit the account was never set to.
        "UPDATE debit_overdrafts SET limit_micros = 9000000, debt_after_micros = 9000000"
        " WHERE user_id = $1",
        # Or a limit set only after the debit.
        "UPDATE overdraft_limit_changes SET changed_at = changed_at + interval '1 day'"
        " WHERE user_id = $1",
        # The debt has no origin: no overdraft and no refund explain it.
        "UPDATE credits SET debt_micros = debt_micros + 1, balance_micros = balance_micros - 1"
        " WHERE user_id = $1",
        # More unpaid overdraft than debt.
        "UPDATE debit_overdrafts SET amount_micros = 2500000 WHERE user_id = $1",
    ],
)
async def test_debt_beyond_its_overdraft_or_refund_breaks_invariant_12(
    admin: AsyncCreditWalletClient, conn: asyncpg.Connection[asyncpg.Record], tamper: str
) -> None:
    user = await overdrawn(admin)
    assert 12 in await broken(conn, user, tamper)


async def test_an_overdraft_larger_than_its_debit_breaks_invariants_2_and_12(
    admin: AsyncCreditWalletClient, conn: asyncpg.Connection[asyncpg.Record]
) -> None:
    user = await overdrawn(admin)
    found = await broken(
        conn,
        user,
        "UPDATE debit_overdrafts SET amount_micros = 4000000 WHERE user_id = $1",
    )
    assert {2, 12} <= found


async def test_a_paid_overdraft_whose_payment_is_not_recorded_breaks_invariant_2(
    admin: AsyncCreditWalletClient, conn: asyncpg.Connection[asyncpg.Record]
) -> None:
    user = await overdrawn(admin)
    await admin.grant(user, 5 * CREDIT, pb.LOT_SOURCE_PROMO)  # pays the 2 owed
    assert 2 in await broken(
        conn,
        user,
        "DELETE FROM lot_consumptions c USING credit_lots l WHERE c.user_id = $1"
        " AND l.user_id = c.user_id AND l.lot_id = c.lot_id AND l.amount_micros = 5000000",
    )
