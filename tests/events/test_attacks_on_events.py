"""An attacker's tests of the events outbox: balance alerts around give-backs that expire at
once, an expiry change's event, rolled-back work leaving no event, and every committed row
with exactly its event. Interleavings are forced by row locks held from a test connection;
time moves only by the ManualClock.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from creditwallet.client import errors as cw
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.v1 import common_pb2 as pb

from tests import attack_kit
from tests.attack_kit import (
    CREDIT,
    _alerts,
    _events,
    _funded,
    _history,
    _month,
    _set_alert,
    _user,
    _verify,
    every_row_has_its_event,
)
from tests.billing.paid import paid
from tests.harness import Ledger


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def ledger(base_dsn: str, data_dir: Path) -> AsyncIterator[Ledger]:
    running = await attack_kit.start(base_dsn, data_dir)
    yield running
    await running.close()


# ---------------------------------------------------------------------------------------------
# events: balance alerts


async def test_void_whose_credits_expire_at_once_fires_no_balance_alert(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """FINDING: a Void (or a hold's expiry, or the unspent part of a capture) whose credits
    come back to an expired lot and expire in the same write leaves the available balance
    exactly where it was, yet emits balance.low and balance.depleted: the deferred trigger
    sees the give-back's UPDATE (available up) and the expiry's UPDATE (available down) as
    two changes, and the second one 'crosses' the line."""
    clock = ledger.clock
    expires = clock.now() + dt.timedelta(hours=1)
    user = await _funded(admin, 5, source=pb.LOT_SOURCE_PROMO, expires_at=expires)
    await _set_alert(admin, user, 2 * CREDIT)
    hold = await admin.authorize(user, amount_micros=5 * CREDIT, ttl_seconds=24 * 3600)
    assert hold.available_micros == 0  # balance.low and balance.depleted, legitimately
    before = _alerts(await _events(ledger, user))
    assert [t for t, _ in before] == ["balance.low", "balance.depleted"]

    clock.set(expires + dt.timedelta(minutes=1))
    voided = await admin.void(user, hold.hold_id)
    assert voided.available_micros == 0  # the 5 credits came back to an expired lot
    after = _alerts(await _events(ledger, user))
    assert after == before, f"an unchanged available balance raised {after[len(before) :]}"
    assert await _verify(admin, user) == []


async def test_reversal_into_an_expired_lot_fires_no_balance_alert(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """FINDING (same root cause): ReverseDebit of a debit whose lot has expired since gives
    the credits back and expires them at once: available 1 -> 1, yet balance.low fires."""
    clock = ledger.clock
    expires = clock.now() + dt.timedelta(hours=1)
    user = await _funded(admin, 4, source=pb.LOT_SOURCE_PROMO, expires_at=expires)
    await admin.grant(user, CREDIT, pb.LOT_SOURCE_TOP_UP)
    await _set_alert(admin, user, 2 * CREDIT)
    spent = await admin.debit(user, amount_micros=4 * CREDIT)  # 5 -> 1: crosses 2
    before = _alerts(await _events(ledger, user))
    assert [t for t, _ in before] == ["balance.low"]

    clock.set(expires + dt.timedelta(minutes=1))
    reversed_ = await admin.reverse_debit(user, spent.transaction_id)
    assert reversed_.available_micros == CREDIT
    after = _alerts(await _events(ledger, user))
    assert after == before, f"an unchanged available balance raised {after[len(before) :]}"
    assert await _verify(admin, user) == []


async def test_one_balance_low_per_crossing_under_concurrency_and_after_rearm(
    ledger: Ledger, admin: AsyncCreditWalletClient, agent: AsyncCreditWalletClient
) -> None:
    """HELD: 60 concurrent debits (group commit on) crossing the threshold give one alert;
    a reversal above the line re-arms it; the next crossing gives exactly one more; the
    account's event numbers have no gap."""
    user = await _funded(admin, 10)
    await _set_alert(admin, user, 5 * CREDIT)
    debits = await asyncio.gather(
        *(agent.debit(user, amount_micros=CREDIT // 10) for _ in range(60))
    )
    assert len({d.transaction_id for d in debits}) == 60
    alerts = _alerts(await _events(ledger, user))
    assert [t for t, _ in alerts] == ["balance.low"]
    # 4 credits left; reverse 2 -> 6 (re-armed), then 30 more concurrent debits of 0.1.
    await admin.reverse_debit(user, debits[0].transaction_id)
    await admin.reverse_debit(user, debits[1].transaction_id)
    await admin.grant(user, 2 * CREDIT, pb.LOT_SOURCE_PROMO)
    await asyncio.gather(*(agent.debit(user, amount_micros=CREDIT // 10) for _ in range(30)))
    events = await _events(ledger, user)
    assert [t for t, _ in _alerts(events)] == ["balance.low", "balance.low"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert await _verify(admin, user) == []


async def test_an_expiry_change_is_not_a_clawback_event(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """FINDING: the history trigger of migration 0007 maps every non-grant row that is not a
    debit, expire or reversal to ``credits.clawed_back``, so each ``expiry_change`` row (a
    subscription lot's expiry corrected, amount 0) goes out to webhooks and StreamEvents as
    a clawback of 0 credits. Nothing was clawed back; the event type is wrong (and
    ``expiry_change`` has no event type of its own in docs/events.md)."""
    clock = ledger.clock
    anchor = clock.now().replace(microsecond=0) + dt.timedelta(days=100)
    p1_end = _month(anchor, 1)
    user, sub = _user("moved"), f"sub_{uuid.uuid4().hex[:12]}"
    clock.set(anchor + dt.timedelta(minutes=1))
    await paid(admin, sub, user, anchor, p1_end, 100, anchor)
    # The renewal ends earlier than the schedule said: P1's lot expiry moves (in the future).
    clock.set(p1_end + dt.timedelta(minutes=1))
    await paid(admin, sub, user, p1_end, p1_end + dt.timedelta(days=20), 100, p1_end)
    changes = [r for r in await _history(ledger, user) if r["type"] == "expiry_change"]
    assert len(changes) == 1
    events = {e["body"].get("transaction_id"): e for e in await _events(ledger, user)}
    event = events.get(str(changes[0]["transaction_id"]))
    assert event is None or event["type"] != "credits.clawed_back", (
        f"an expiry change went out as {event['type']}: {event['body']}"
    )


# ---------------------------------------------------------------------------------------------
# events: rolled-back work leaves none; every committed row has exactly its event


async def test_a_stored_refusal_keeps_no_event_of_the_expiry_it_rolled_back(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """HELD: an Authorize refused after its lock recorded a due expiry rolls that expiry
    back with its savepoint, trigger-written event included; the next write records the
    expiry once, with its one event, and the refusal replays as stored."""
    clock = ledger.clock
    expires = clock.now() + dt.timedelta(hours=1)
    user = await _funded(admin, 3, source=pb.LOT_SOURCE_PROMO, expires_at=expires)
    await admin.grant(user, CREDIT, pb.LOT_SOURCE_TOP_UP)
    clock.set(expires + dt.timedelta(seconds=1))
    for _ in range(2):
        with pytest.raises(cw.InsufficientCredits):
            await admin.authorize(user, amount_micros=2 * CREDIT, request_id="too-much")
    types = [e["type"] for e in await _events(ledger, user)]
    assert "credits.expired" not in types
    assert [r["type"] for r in await _history(ledger, user)].count("expire") == 0
    assert (await admin.get_balance(user)).available_micros == CREDIT
    types = [e["type"] for e in await _events(ledger, user)]
    assert types.count("credits.expired") == 1
    assert [r["type"] for r in await _history(ledger, user)].count("expire") == 1


async def test_every_committed_row_of_this_module_has_exactly_its_event(ledger: Ledger) -> None:
    """HELD (run last, over everything above: alerts, expiry changes, refusals)."""
    await every_row_has_its_event(ledger)
