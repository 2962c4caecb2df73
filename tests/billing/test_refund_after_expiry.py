"""A refund claws back what is left and what was spent, never credits that expired unused.

The clawback takes from the refunded payment's own lot first; only the rest becomes debt,
and only up to the credits the lot did not lose to expiry. Invariant 8 of VerifyLedger
checks, per lot, that clawbacks never made more debt than the lot gave out. Each test moves
the module's one clock forward only, to its own months.
"""

from __future__ import annotations

import datetime as dt
import uuid

import asyncpg
import pytest
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.server import db
from creditwallet.server.ledger import periods
from creditwallet.v1 import billing_service_pb2 as bpb
from creditwallet.v1 import common_pb2 as pb

from tests import harness
from tests.billing.paid import paid
from tests.harness import Ledger

CREDIT = 1_000_000


async def _refund(admin: AsyncCreditWalletClient, payment: str, minor: int) -> int:
    refund = await admin.billing.RecordRefund(
        bpb.RecordRefundRequest(
            request_id=f"evt-{uuid.uuid4().hex}", payment_id=payment, amount_refunded_minor=minor
        )
    )
    return refund.clawed_back_micros // CREDIT


class Period:
    """A 100-credit period (paid 1000), a 50-credit top-up, 30 credits spent from the period."""

    def __init__(self, ledger: Ledger, admin: AsyncCreditWalletClient, months: int) -> None:
        self.ledger, self.admin = ledger, admin
        base = ledger.clock.now().replace(microsecond=0)
        self.anchor = periods.add_months(base, months, base.day)
        self.p1_end = periods.add_months(self.anchor, 1, self.anchor.day)
        self.p2_end = periods.add_months(self.anchor, 2, self.anchor.day)
        self.user = f"refund-{harness.new_user()}"
        self.payment = f"pi_{uuid.uuid4().hex}"

    async def start(self) -> None:
        self.ledger.clock.set(self.anchor + dt.timedelta(minutes=1))
        sub = f"sub_{uuid.uuid4().hex[:12]}"
        await paid(
            self.admin,
            sub,
            self.user,
            self.anchor,
            self.p1_end,
            100,
            self.anchor,
            self.payment,
            amount_paid_minor=1000,
        )
        await self.admin.grant(self.user, 50 * CREDIT, pb.LOT_SOURCE_TOP_UP)
        await self.admin.debit(self.user, amount_micros=30 * CREDIT)

    def expired(self) -> None:
        self.ledger.clock.set(self.p2_end + dt.timedelta(days=1))

    async def state(self) -> tuple[int, int]:
        balance = await self.admin.get_balance(self.user)
        return balance.available_micros // CREDIT, balance.debt_micros // CREDIT


@pytest.mark.usefixtures("verified")
async def test_a_partial_refund_after_expiry_claws_back_at_most_what_was_spent(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """Half refunded after 70 of 100 expired: 50 would be the proportional share, but only
    the 30 spent are there to claw back (as debt, paid from the top-up)."""
    p = Period(ledger, admin, 300)
    await p.start()
    p.expired()
    assert await _refund(admin, p.payment, 500) == 30
    assert await p.state() == (20, 0)
    assert await _refund(admin, p.payment, 1000) == 0  # the rest of the refund: nothing left
    assert await p.state() == (20, 0)


@pytest.mark.usefixtures("verified")
async def test_a_refund_before_and_after_expiry_claws_back_what_was_left_then_what_was_spent(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """Half refunded while 70 were left: 50 from the lot. The last 20 expire. The rest of the
    refund claws back what was spent (30), never the 20 that expired."""
    p = Period(ledger, admin, 303)
    await p.start()
    assert await _refund(admin, p.payment, 500) == 50
    assert await p.state() == (70, 0)
    p.expired()
    assert await p.state() == (50, 0)
    assert await _refund(admin, p.payment, 1000) == 30
    assert await p.state() == (20, 0)


@pytest.mark.usefixtures("verified")
async def test_a_refund_of_a_live_period_is_unchanged(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """Nothing expired: the whole allotment is clawed back, 70 from the lot, 30 as debt."""
    p = Period(ledger, admin, 306)
    await p.start()
    assert await _refund(admin, p.payment, 1000) == 100
    assert await p.state() == (20, 0)


async def test_verify_ledger_reports_a_clawback_debt_above_what_the_lot_gave_out(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """Invariant 8 on a tampered row: a clawback that says it took nothing from its lot,
    so all of it would be debt, though only 30 credits were ever spent from the lot."""
    p = Period(ledger, admin, 309)
    await p.start()
    assert await _refund(admin, p.payment, 1000) == 100
    conn = await asyncpg.connect(db.dsn_with(ledger.dsn, user="postgres"))  # history: append-only
    tamper = (
        "UPDATE credit_transactions SET metadata = jsonb_set(metadata, '{from_lot_micros}',"
        " to_jsonb($2::text)) WHERE user_id = $1 AND type = 'clawback'"
    )
    try:
        await conn.execute(tamper, p.user, "0")
        report = await admin.verify_ledger()
        found = [(v.invariant, v.detail) for v in report.violations if v.user_id == p.user]
        assert [i for i, _ in found] == [8], found
        assert "100000000 micros of debt, but only 30000000" in found[0][1]
    finally:
        await conn.execute(tamper, p.user, str(70 * CREDIT))
        await conn.close()
