"""Balance alerts judge a whole transaction: the available balance it found against the one
it committed, however many times the account row was updated in between.

Credits given back to a lot that has expired (a void, a hold's expiry, the unspent part of a
capture, a reversal) expire in the same write: the account is updated up, then down, and the
available balance ends where it was. That is no crossing.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.server.ledger import periods
from creditwallet.v1 import common_pb2 as pb
from creditwallet.v1 import events_pb2 as epb

from tests import events_kit, harness
from tests.billing.paid import paid
from tests.harness import Ledger

pytestmark = pytest.mark.usefixtures("verified")

CREDIT = 1_000_000


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def ledger(base_dsn: str, data_dir: Path) -> AsyncIterator[Ledger]:
    running = await events_kit.start(
        base_dsn, data_dir, balance_low_default_micros=0, workers=False
    )
    yield running
    await running.close()


async def _alerts(ledger: Ledger, user: str) -> list[tuple[str, dict[str, Any]]]:
    events = await events_kit.events_of(ledger.dsn, user)
    return [(e["type"], e["body"]) for e in events if e["type"].startswith("balance.")]


async def _promo(admin: AsyncCreditWalletClient, credits: int, expires: dt.datetime) -> str:
    user = f"alert-{harness.new_user()}"
    await admin.grant(
        user, credits * CREDIT, pb.LOT_SOURCE_PROMO, create_account=True, expires_at=expires
    )
    await admin.admin.SetBalanceAlert(
        epb.SetBalanceAlertRequest(user_id=user, threshold_micros=2 * CREDIT)
    )
    return user


async def test_a_hold_expiring_into_an_expired_lot_fires_no_alert(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """Below the line (1 available), 4 held from a promo that expires, then the hold's TTL:
    the release gives 4 back (5, above the line) and expires them (1): 1 -> 1, nothing."""
    expires = ledger.clock.now() + dt.timedelta(hours=1)
    user = await _promo(admin, 4, expires)
    await admin.grant(user, CREDIT, pb.LOT_SOURCE_TOP_UP)
    await admin.authorize(user, amount_micros=4 * CREDIT, ttl_seconds=2 * 3600)
    before = await _alerts(ledger, user)
    assert [t for t, _ in before] == ["balance.low"]  # 5 -> 1, legitimately
    ledger.clock.set(expires + dt.timedelta(hours=2))
    await admin.grant(user, 1, pb.LOT_SOURCE_TOP_UP)  # a write: the sweep runs
    assert (await admin.get_balance(user)).available_micros == CREDIT + 1
    assert await _alerts(ledger, user) == before


async def test_a_partial_capture_whose_rest_expires_fires_no_alert(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """1 available after a 4-credit hold on a 4-credit promo (the authorize crossed the line);
    the promo expires; capturing 2 gives 2 back (3, above the line inside the write) that
    expire at once: 1 -> 1, nothing fires."""
    expires = ledger.clock.now() + dt.timedelta(hours=1)
    user = await _promo(admin, 4, expires)
    await admin.grant(user, CREDIT, pb.LOT_SOURCE_TOP_UP)
    hold = await admin.authorize(user, amount_micros=4 * CREDIT, ttl_seconds=24 * 3600)
    assert hold.available_micros == CREDIT
    before = await _alerts(ledger, user)
    assert [t for t, _ in before] == ["balance.low"]
    ledger.clock.set(expires + dt.timedelta(minutes=1))
    captured = await admin.capture(user, hold.hold_id, amount_micros=2 * CREDIT)
    assert captured.available_micros == CREDIT
    assert await _alerts(ledger, user) == before


@pytest.mark.parametrize(("threshold", "alerts"), [(150, 0), (300, 1)])
async def test_a_dip_inside_one_write_is_judged_by_what_it_commits(
    ledger: Ledger, admin: AsyncCreditWalletClient, threshold: int, alerts: int
) -> None:
    """A downgrade renewal first cuts the carried credits to the new allotment (1000 -> 100)
    and then grants it (-> 200), in one write. Below 150 only in between: no alert. A line
    at 300 is really crossed: one alert, naming the write's first and last balances."""
    clock = ledger.clock
    anchor = clock.now().replace(microsecond=0) + dt.timedelta(days=40 + threshold)
    p1_end = periods.add_months(anchor, 1, anchor.day)
    p2_end = periods.add_months(anchor, 2, anchor.day)
    user, sub = f"dip-{harness.new_user()}", f"sub_{uuid.uuid4().hex[:12]}"
    clock.set(anchor + dt.timedelta(minutes=1))
    await paid(admin, sub, user, anchor, p1_end, 1000, anchor)
    await admin.admin.SetBalanceAlert(
        epb.SetBalanceAlertRequest(user_id=user, threshold_micros=threshold * CREDIT)
    )
    clock.set(p1_end + dt.timedelta(minutes=1))
    await paid(admin, sub, user, p1_end, p2_end, 100, anchor)
    assert (await admin.get_balance(user)).available_micros == 200 * CREDIT
    expected = {
        "threshold_micros": threshold * CREDIT,
        "available_before_micros": 1000 * CREDIT,
        "available_micros": 200 * CREDIT,
    }
    assert await _alerts(ledger, user) == [("balance.low", expected)] * alerts
