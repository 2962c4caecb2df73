from __future__ import annotations

import pytest

from clients.wallet import AsyncCreditWalletClient
from tests.harness import new_user

pytestmark = pytest.mark.usefixtures("verified")


async def test_trial_and_debit(admin: AsyncCreditWalletClient) -> None:
    user = new_user()
    created = await admin.ensure_account(user)
    assert created.created
    assert created.balance.available_micros == 5_000_000
    result = await admin.debit(user, amount_micros=1_500_000)
    assert result.charged_micros == 1_500_000
    assert result.available_micros == 3_500_000
