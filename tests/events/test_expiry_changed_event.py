"""An ``expiry_change`` history row has an event of its own: credits.expiry_changed.

A subscription lot's expiry corrected by the provider's next period (amount 0) is neither a
clawback nor an expiry; its event says which lot, the new expiry and the one it replaces.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.server.ledger import periods

from tests import events_kit, harness
from tests.billing.paid import paid
from tests.harness import Ledger

pytestmark = pytest.mark.usefixtures("verified")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def ledger(base_dsn: str, data_dir: Path) -> AsyncIterator[Ledger]:
    running = await events_kit.start(
        base_dsn, data_dir, balance_low_default_micros=0, workers=False
    )
    yield running
    await running.close()


async def test_an_expiry_change_goes_out_as_credits_expiry_changed(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    clock = ledger.clock
    anchor = clock.now().replace(microsecond=0) + dt.timedelta(days=10)
    p1_end = periods.add_months(anchor, 1, anchor.day)
    user, sub = f"moved-{harness.new_user()}", f"sub_{uuid.uuid4().hex[:12]}"
    clock.set(anchor + dt.timedelta(minutes=1))
    await paid(admin, sub, user, anchor, p1_end, 100, anchor)
    clock.set(p1_end + dt.timedelta(minutes=1))
    # The renewal ends 20 days in, not a month: P1's lot now expires then.
    await paid(admin, sub, user, p1_end, p1_end + dt.timedelta(days=20), 100, p1_end)
    conn = await asyncpg.connect(ledger.dsn)
    try:
        [change] = await conn.fetch(
            "SELECT * FROM credit_transactions WHERE user_id = $1 AND type = 'expiry_change'",
            user,
        )
    finally:
        await conn.close()
    events = await events_kit.events_of(ledger.dsn, user)
    mine = [e for e in events if e["body"].get("transaction_id") == str(change["transaction_id"])]
    assert [e["type"] for e in mine] == ["credits.expiry_changed"]
    body = mine[0]["body"]
    assert body["lot_id"] == body["metadata"]["lot_id"]
    assert body["expires_at"] == body["metadata"]["expires_at"]
    assert dt.datetime.fromisoformat(body["expires_at"]) == p1_end + dt.timedelta(days=20)
    assert dt.datetime.fromisoformat(body["previous_expires_at"]) == periods.add_months(
        anchor, 2, anchor.day
    )
    assert "amount_micros" not in body
    assert body["metadata"]["reason"] == "next_period_end"
    assert not [e for e in events if e["type"] == "credits.clawed_back"]
