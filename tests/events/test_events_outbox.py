"""The outbox: every committed change has its events, a rolled-back one has none; alerts.

Events are compared with the ledger's own rows (history, lots, holds), read from the
database after the fact: one event per row, with the row's own timestamp, and sequence
numbers 1..n with no gap, in the account's commit order.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from creditwallet.client import errors as cw
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.server import db
from creditwallet.server.events import expiring as expiring_scan
from creditwallet.server.events.settings import EventsConfig
from creditwallet.server.ledger import accounts, lots
from creditwallet.v1 import billing_service_pb2 as bpb
from creditwallet.v1 import common_pb2 as pb
from creditwallet.v1 import events_pb2 as epb
from google.protobuf.timestamp_pb2 import Timestamp

from tests import events_kit, harness
from tests.harness import new_user

CREDIT = 1_000_000
TYPE_OF = {
    "debit": "credits.debited",
    "expire": "credits.expired",
    "reversal": "credits.reversed",
    "clawback": "credits.clawed_back",
}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def ledger(base_dsn: str, data_dir: Path) -> AsyncIterator[harness.Ledger]:
    running = await events_kit.start(base_dsn, data_dir, balance_low_default_micros=2 * CREDIT)
    yield running
    await running.close()


async def ledger_rows(dsn: str, user: str) -> dict[str, list[asyncpg.Record]]:
    conn = await asyncpg.connect(dsn)
    try:
        return {
            "history": list(
                await conn.fetch(
                    "SELECT * FROM credit_transactions WHERE user_id = $1 AND type <> 'grant' "
                    "ORDER BY transaction_id",
                    user,
                )
            ),
            "lots": list(
                await conn.fetch(
                    "SELECT * FROM credit_lots WHERE user_id = $1 ORDER BY lot_id", user
                )
            ),
            "holds": list(
                await conn.fetch("SELECT * FROM holds WHERE user_id = $1 ORDER BY created_at", user)
            ),
        }
    finally:
        await conn.close()


async def test_every_committed_change_has_its_events_in_commit_order(
    ledger: harness.Ledger, admin: AsyncCreditWalletClient, verified: None
) -> None:
    user = new_user()
    clock = ledger.clock
    await admin.ensure_account(user)  # trial lot: 5 credits, 30 days
    first = await admin.debit(user, amount_micros=CREDIT)
    hold = await admin.authorize(user, amount_micros=CREDIT)
    await admin.capture(user, hold.hold_id, amount_micros=CREDIT // 2)
    voided = await admin.authorize(user, amount_micros=CREDIT // 4)
    await admin.void(user, voided.hold_id)
    await admin.authorize(user, amount_micros=CREDIT // 4, ttl_seconds=60)
    await admin.grant(
        user,
        3 * CREDIT,
        pb.LOT_SOURCE_PROMO,
        expires_at=clock.now() + dt.timedelta(hours=1),
    )
    await admin.reverse_debit(user, first.transaction_id, amount_micros=CREDIT // 2)
    clock.advance(hours=2)  # the held 0.25 is released, the promo lot expires: 4 left
    await admin.debit(user, amount_micros=3 * CREDIT)  # below the default threshold of 2

    events = await events_kit.events_of(ledger.dsn, user)
    rows = await ledger_rows(ledger.dsn, user)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))

    by_type: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_type.setdefault(event["type"], []).append(event)
    # One event per history row, with the row's figures and its own timestamp.
    history = [e for e in events if e["type"] in TYPE_OF.values()]
    assert [(e["type"], e["body"]["transaction_id"], e["occurred_at"]) for e in history] == [
        (TYPE_OF[r["type"]], str(r["transaction_id"]), r["created_at"]) for r in rows["history"]
    ]
    for event, row in zip(history, rows["history"], strict=True):
        assert event["body"]["amount_micros"] == abs(row["amount_micros"])
        assert event["body"]["balance_after_micros"] == row["balance_after_micros"]
    # One credits.granted per lot.
    granted = by_type["credits.granted"]
    assert [
        (e["body"]["lot_id"], e["body"]["amount_micros"], e["occurred_at"]) for e in granted
    ] == [(str(r["lot_id"]), r["amount_micros"], r["granted_at"]) for r in rows["lots"]]
    assert granted[1]["body"]["expires_at"] is not None
    # Holds: created, then how each ended.
    assert len(by_type["hold.created"]) == len(rows["holds"]) == 3
    assert sorted(e["body"]["hold_id"] for e in by_type["hold.created"]) == sorted(
        str(h["hold_id"]) for h in rows["holds"]
    )
    ended = {
        e["body"]["hold_id"]: e["type"]
        for e in events
        if e["type"].startswith("hold.") and e["type"] != "hold.created"
    }
    assert ended == {str(h["hold_id"]): f"hold.{h['status']}" for h in rows["holds"]}
    # Capture: a debit event with the hold, and hold.captured right after it.
    capture = next(e for e in history if e["body"].get("hold_id") == hold.hold_id)
    assert events[capture["seq"]]["type"] == "hold.captured"
    # The default threshold (2 credits) was crossed once, by the last debit's write, judged
    # from the available balance as recorded before it: 6.75, the expired hold's 0.25 and
    # promo's 3 included (that write recorded their expiry first).
    [low] = by_type["balance.low"]
    assert low["body"] == {
        "threshold_micros": 2 * CREDIT,
        "available_before_micros": 27 * CREDIT // 4,
        "available_micros": CREDIT,
    }
    assert low["seq"] == events[-1]["seq"], "alerts come after the transaction's other events"


async def test_a_rolled_back_change_has_no_event(
    ledger: harness.Ledger, admin: AsyncCreditWalletClient
) -> None:
    refused = new_user()
    with pytest.raises(cw.CreditWalletError) as error:
        await admin.ensure_account(refused, referral_code="ZZZZ2222")  # no such code
    assert error.value.reason == "REFERRAL_CODE_NOT_FOUND"

    rolled_back = new_user()

    async def grant_then_fail(conn: db.Connection) -> None:
        locked, _ = await accounts.ensure(conn, rolled_back, ledger.clock, 5 * CREDIT)
        await lots.grant(conn, locked.account, source="promo", amount_micros=CREDIT, now=locked.now)
        raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        await db.run_transaction(ledger.pool, grant_then_fail)

    short = new_user()
    await admin.ensure_account(short)
    with pytest.raises(cw.InsufficientCredits):
        await admin.debit(short, amount_micros=6 * CREDIT)

    assert await events_kit.events_of(ledger.dsn, refused) == []
    assert await events_kit.events_of(ledger.dsn, rolled_back) == []
    assert [e["type"] for e in await events_kit.events_of(ledger.dsn, short)] == ["credits.granted"]


async def test_concurrent_writers_get_gapless_numbers_in_commit_order(
    ledger: harness.Ledger, admin: AsyncCreditWalletClient, agent: AsyncCreditWalletClient
) -> None:
    user = new_user()
    await admin.ensure_account(user)
    await admin.grant(user, 100 * CREDIT, pb.LOT_SOURCE_TOP_UP)
    await asyncio.gather(*(agent.debit(user, amount_micros=CREDIT // 10) for _ in range(40)))
    events = await events_kit.events_of(ledger.dsn, user)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    debits = [int(e["body"]["transaction_id"]) for e in events if e["type"] == "credits.debited"]
    assert len(debits) == 40
    assert debits == sorted(debits), "the account lock orders both: ids and sequence numbers"


async def test_balance_alerts_fire_once_per_crossing_and_rearm(
    ledger: harness.Ledger, admin: AsyncCreditWalletClient
) -> None:
    user = new_user()
    await admin.ensure_account(user)
    reply = await admin.admin.SetBalanceAlert(
        epb.SetBalanceAlertRequest(user_id=user, threshold_micros=3 * CREDIT)
    )
    assert reply.threshold_micros == 3 * CREDIT
    await admin.debit(user, amount_micros=CREDIT)  # 5 -> 4: above
    await admin.debit(user, amount_micros=2 * CREDIT)  # 4 -> 2: crosses 3
    await admin.debit(user, amount_micros=CREDIT // 2)  # 2 -> 1.5: still below, no alert
    await admin.grant(user, 2 * CREDIT, pb.LOT_SOURCE_PROMO)  # 3.5: above again (re-armed)
    await admin.debit(user, amount_micros=CREDIT)  # 3.5 -> 2.5: crosses again
    await admin.debit(user, amount_micros=5 * CREDIT // 2)  # -> 0: depleted (and no low)

    events = await events_kit.events_of(ledger.dsn, user)
    alerts = [(e["type"], e["body"]) for e in events if e["type"].startswith("balance.")]
    assert alerts == [
        (
            "balance.low",
            {
                "threshold_micros": 3 * CREDIT,
                "available_before_micros": 4 * CREDIT,
                "available_micros": 2 * CREDIT,
            },
        ),
        (
            "balance.low",
            {
                "threshold_micros": 3 * CREDIT,
                "available_before_micros": 7 * CREDIT // 2,
                "available_micros": 5 * CREDIT // 2,
            },
        ),
        ("balance.depleted", {"available_before_micros": 5 * CREDIT // 2, "available_micros": 0}),
    ]
    # A threshold of 0 turns balance.low off for the account.
    await admin.admin.SetBalanceAlert(epb.SetBalanceAlertRequest(user_id=user, threshold_micros=0))
    await admin.grant(user, 5 * CREDIT, pb.LOT_SOURCE_PROMO)
    await admin.debit(user, amount_micros=5 * CREDIT - 1)
    later = await events_kit.events_of(ledger.dsn, user)
    assert [e["type"] for e in later[len(events) :] if e["type"] == "balance.low"] == []

    with pytest.raises(cw.CreditWalletError) as refused:
        await admin.admin.SetBalanceAlert(
            epb.SetBalanceAlertRequest(user_id=new_user(), threshold_micros=CREDIT)
        )
    assert refused.value.reason == "ACCOUNT_NOT_FOUND"
    with pytest.raises(cw.CreditWalletError) as invalid:
        await admin.admin.SetBalanceAlert(
            epb.SetBalanceAlertRequest(user_id=user, threshold_micros=-1)
        )
    assert invalid.value.reason == "INVALID_ARGUMENT"


async def test_credits_expiring_once_per_lot_with_the_ledgers_expiry(
    ledger: harness.Ledger, admin: AsyncCreditWalletClient
) -> None:
    user = new_user()
    await admin.ensure_account(user)
    expires_at = ledger.clock.now() + dt.timedelta(days=40, seconds=7)
    granted = await admin.grant(user, 2 * CREDIT, pb.LOT_SOURCE_PROMO, expires_at=expires_at)
    lead = dt.timedelta(days=EventsConfig().expiring_lead_days)

    async def expiring(source: str = "promo") -> list[dict[str, Any]]:
        return [
            e
            for e in await events_kit.events_of(ledger.dsn, user)
            if e["type"] == "credits.expiring" and e["body"]["source"] == source
        ]

    async def scan() -> int:  # what the periodic scan does, run here once more
        now = ledger.clock.now()
        return await db.run_transaction(
            ledger.pool, lambda conn: expiring_scan.notice_due(conn, now, lead.days)
        )

    ledger.clock.set(expires_at - lead - dt.timedelta(seconds=1))
    await scan()
    assert await expiring() == [], "not yet within the lead time"
    ledger.clock.set(expires_at - lead + dt.timedelta(seconds=1))

    async def noticed() -> bool:
        return len(await expiring()) == 1

    await events_kit.wait_for(noticed, "credits.expiring written by the periodic scan")
    assert await scan() == 0, "once per lot"
    [event] = await expiring()
    assert event["body"]["lot_id"] == granted.lot.lot_id
    assert dt.datetime.fromisoformat(str(event["body"]["expires_at"])) == expires_at
    assert event["body"]["remaining_micros"] == 2 * CREDIT
    # The clock jumped past the trial lot's whole window (30 days): an expired lot is not
    # announced as expiring (its credits.expired says what happened).
    assert await expiring("trial") == []


async def test_subscription_updated_and_payment_failed(
    ledger: harness.Ledger, admin: AsyncCreditWalletClient
) -> None:
    user = new_user()
    await admin.ensure_account(user)
    billing = ledger.client("billing")
    now = int(ledger.clock.now().timestamp())
    sync = bpb.SyncSubscriptionRequest(
        request_id=f"evt_sub_{user}",
        subscription_id=f"sub_{user}",
        customer_id=f"cus_{user}",
        user_id=user,
        status=pb.SUBSCRIPTION_STATUS_ACTIVE,
        price_id="price_cw_monthly_250",
        period_credits_micros=250 * CREDIT,
        event_created_at=Timestamp(seconds=now),
    )
    sync.current_period_start.FromSeconds(now)
    sync.current_period_end.FromSeconds(now + 30 * 86400)
    await billing.billing.SyncSubscription(sync)
    await billing.billing.RecordPaymentFailure(
        bpb.RecordPaymentFailureRequest(
            request_id=f"evt_fail_{user}",
            subscription_id=f"sub_{user}",
            customer_id=f"cus_{user}",
            invoice_id="in_123",
            event_created_at=Timestamp(seconds=now + 60),
        )
    )
    events = [
        e
        for e in await events_kit.events_of(ledger.dsn, user)
        if e["type"] in ("subscription.updated", "payment.failed")
    ]
    assert [(e["type"], e["body"].get("status")) for e in events] == [
        ("subscription.updated", "active"),
        ("subscription.updated", "past_due"),
        ("payment.failed", None),
    ]
    assert events[2]["body"]["invoice_id"] == "in_123"
