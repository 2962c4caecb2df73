"""`creditwallet streak` and `creditwallet referral code|redeem` against the real server."""

from __future__ import annotations

import json
import re

import pytest
from creditwallet.client.wallet import AsyncCreditWalletClient

from tests.harness import Ledger, cli, new_user

pytestmark = pytest.mark.usefixtures("verified")


async def test_cli_streak(
    ledger: Ledger, admin: AsyncCreditWalletClient, capsys: pytest.CaptureFixture[str]
) -> None:
    user = new_user()
    await admin.ensure_account(user)
    await admin.debit(user, amount_micros=1_000_000)
    assert await cli(ledger, "streak", user) == 0
    out = capsys.readouterr().out
    assert re.search(r"current\s+1 day\n", out)  # one day, not "1 days"
    assert re.search(r"next milestone\s+3 days", out)
    assert re.search(rf"last active\s+{ledger.clock.now().date().isoformat()}", out)
    assert await cli(ledger, "--json", "streak", user) == 0
    streak = json.loads(capsys.readouterr().out)["streak"]
    assert (streak["currentDays"], streak["nextMilestoneDays"]) == (1, 3)


async def test_cli_referral_code_and_redeem(
    ledger: Ledger, admin: AsyncCreditWalletClient, capsys: pytest.CaptureFixture[str]
) -> None:
    referrer, referee = new_user(), new_user()
    await admin.ensure_account(referrer)
    await admin.ensure_account(referee)
    assert await cli(ledger, "--json", "referral", "code", referrer) == 0
    code = json.loads(capsys.readouterr().out)["code"]
    assert code == (await admin.get_referral_code(referrer)).code
    assert await cli(ledger, "referral", "redeem", referee, code, "--request-id", "cli-r") == 0
    out = capsys.readouterr().out
    assert re.search(r"granted\s+10 credits", out)
    assert await cli(ledger, "referral", "redeem", referee, code, "--request-id", "cli-r2") == 1
    assert "REFERRAL_NOT_ALLOWED" in capsys.readouterr().err
