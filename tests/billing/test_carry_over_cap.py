"""The carry-over cap counts credits that come back to a carried lot after the renewal.

A downgrade renewal caps the credits carried from the ended period at the new allotment. A
hold placed before the renewal keeps its credits (a capture spends them), but what comes back
to the carried lot afterwards (a void, the hold's expiry, the unspent part of a capture, a
reversal) is capped again at once. Invariant 7 of VerifyLedger checks the cap after the fact.
Each test moves the module's one clock forward only, to its own months.
"""

from __future__ import annotations

import datetime as dt
import uuid

import asyncpg
import pytest
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.server.ledger import periods

from tests import harness
from tests.billing.paid import paid
from tests.harness import Ledger

CREDIT = 1_000_000
DAY = dt.timedelta(days=1)


async def _violations(admin: AsyncCreditWalletClient, user: str) -> list[tuple[int, str]]:
    report = await admin.verify_ledger()
    return [(v.invariant, v.detail) for v in report.violations if v.user_id == user]


async def _capped(ledger: Ledger, user: str) -> list[int]:
    conn = await asyncpg.connect(ledger.dsn)
    try:
        rows = await conn.fetch(
            "SELECT amount_micros FROM credit_transactions WHERE user_id = $1 AND type = 'expire'"
            " AND metadata->>'reason' = 'carry_over_cap' ORDER BY transaction_id",
            user,
        )
    finally:
        await conn.close()
    return [-r["amount_micros"] // CREDIT for r in rows]


class Downgrade:
    """A 1000-credit period, then (after ``before_renewal``) a renewal downgraded to 100."""

    def __init__(self, ledger: Ledger, admin: AsyncCreditWalletClient, months: int) -> None:
        self.ledger, self.admin = ledger, admin
        base = ledger.clock.now().replace(microsecond=0)
        self.anchor = periods.add_months(base, months, base.day)
        self.p1_end = periods.add_months(self.anchor, 1, self.anchor.day)
        self.p2_end = periods.add_months(self.anchor, 2, self.anchor.day)
        self.user = f"carry-{harness.new_user()}"
        self.sub = f"sub_{uuid.uuid4().hex[:12]}"

    async def first_period(self) -> None:
        self.ledger.clock.set(self.anchor + dt.timedelta(minutes=1))
        await paid(self.admin, self.sub, self.user, self.anchor, self.p1_end, 1000, self.anchor)
        self.ledger.clock.set(self.p1_end - dt.timedelta(hours=1))

    async def renewal(self) -> None:
        self.ledger.clock.set(self.p1_end + dt.timedelta(minutes=1))
        await paid(self.admin, self.sub, self.user, self.p1_end, self.p2_end, 100, self.anchor)

    async def available(self) -> int:
        return (await self.admin.get_balance(self.user)).available_micros // CREDIT


@pytest.mark.usefixtures("verified")
async def test_a_capture_after_the_renewal_spends_what_was_held(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """Held before the renewal, captured after it: as if spent before it. The 100 credits
    left in the carried lot are within the cap, and nothing more is cut."""
    d = Downgrade(ledger, admin, 3)
    await d.first_period()
    hold = await admin.authorize(d.user, amount_micros=900 * CREDIT, ttl_seconds=86_400)
    await d.renewal()
    captured = await admin.capture(d.user, hold.hold_id)
    assert captured.charged_micros == 900 * CREDIT
    assert await d.available() == 200
    assert await _capped(ledger, d.user) == []


@pytest.mark.usefixtures("verified")
async def test_a_partial_capture_gives_back_only_what_fits_under_the_cap(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """Captured 300 of 900 held: the 600 that come back would carry 700; 600 are cut."""
    d = Downgrade(ledger, admin, 6)
    await d.first_period()
    hold = await admin.authorize(d.user, amount_micros=900 * CREDIT, ttl_seconds=86_400)
    await d.renewal()
    await admin.capture(d.user, hold.hold_id, amount_micros=300 * CREDIT)
    assert await d.available() == 200
    assert await _capped(ledger, d.user) == [600]


@pytest.mark.usefixtures("verified")
async def test_a_hold_expiring_after_the_renewal_is_capped_when_released(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """The hold's TTL passes after the renewal: the release (by the next touch) is capped."""
    d = Downgrade(ledger, admin, 9)
    await d.first_period()
    await admin.authorize(d.user, amount_micros=900 * CREDIT, ttl_seconds=2 * 3600)
    await d.renewal()
    ledger.clock.set(d.p1_end + dt.timedelta(hours=2))
    assert await d.available() == 200
    await admin.debit(d.user, amount_micros=CREDIT)  # a write: the release is recorded
    assert await d.available() == 199
    assert await _capped(ledger, d.user) == [900]


@pytest.mark.usefixtures("verified")
async def test_a_reversal_into_a_carried_lot_is_capped(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """Spent 900 before the renewal, reversed after it: the credits come back to the carried
    lot and the cap expires them; a reversal within the cap would have kept them."""
    d = Downgrade(ledger, admin, 12)
    await d.first_period()
    spent = await admin.debit(d.user, amount_micros=900 * CREDIT)
    await d.renewal()
    await admin.reverse_debit(d.user, spent.transaction_id)
    assert await d.available() == 200
    assert await _capped(ledger, d.user) == [900]


async def test_verify_ledger_reports_carried_credits_above_the_cap(
    ledger: Ledger, admin: AsyncCreditWalletClient
) -> None:
    """Invariant 7 on a tampered row: the recorded cap lowered below what the lot carries."""
    d = Downgrade(ledger, admin, 15)
    await d.first_period()
    await d.renewal()
    assert await _violations(admin, d.user) == []
    conn = await asyncpg.connect(ledger.dsn)
    try:
        await conn.execute(
            "UPDATE subscription_periods SET carry_cap_micros = carry_cap_micros - 1"
            " WHERE user_id = $1 AND carry_cap_micros IS NOT NULL",
            d.user,
        )
        found = await _violations(admin, d.user)
        assert [i for i, _ in found] == [7], found
        assert "above the carry-over cap" in found[0][1]
    finally:
        await conn.execute(
            "UPDATE subscription_periods SET carry_cap_micros = carry_cap_micros + 1"
            " WHERE user_id = $1 AND carry_cap_micros IS NOT NULL",
            d.user,
        )
        await conn.close()
