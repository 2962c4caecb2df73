"""The operators' CLI against the real server: tables by default, --json for scripts."""

from __future__ import annotations

import asyncio
import json

import pytest
from creditwallet.client.cli import main
from creditwallet.client.wallet import AsyncCreditWalletClient

from tests.harness import Ledger, cli, new_user

pytestmark = pytest.mark.usefixtures("verified")


async def test_grant_debit_balance_history_in_credits(
    ledger: Ledger, admin: AsyncCreditWalletClient, capsys: pytest.CaptureFixture[str]
) -> None:
    user = new_user()
    await admin.ensure_account(user)
    assert await cli(ledger, "grant", user, "2.5", "--source", "promo") == 0
    assert await cli(ledger, "prices", "set", "writer", "0.25", "--unit", "page") == 0
    assert await cli(ledger, "debit", user, "--agent", "writer", "--quantity", "4") == 0
    capsys.readouterr()
    assert await cli(ledger, "--json", "balance", user) == 0
    balance = json.loads(capsys.readouterr().out)
    assert int(balance["available_micros"]) == 6_500_000
    assert await cli(ledger, "balance", user) == 0
    assert "6.5 credits" in capsys.readouterr().out
    assert await cli(ledger, "--json", "history", user) == 0
    history = json.loads(capsys.readouterr().out)
    rows = history["transactions"] if isinstance(history, dict) else history
    assert len(rows) == 3
    assert await cli(ledger, "debit", user, "--amount", "100") == 2
    assert "INSUFFICIENT_CREDITS" in capsys.readouterr().err


async def test_prices_stats_and_verify(ledger: Ledger, capsys: pytest.CaptureFixture[str]) -> None:
    assert await cli(ledger, "prices", "set", "reader", "1") == 0
    assert await cli(ledger, "prices", "list") == 0
    assert "reader" in capsys.readouterr().out
    assert await cli(ledger, "stats") == 0
    assert await cli(ledger, "verify") == 0
    capsys.readouterr()
    assert await cli(ledger, "--json", "verify") == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


async def test_wrong_token_is_refused_without_echoing_it(
    ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await asyncio.to_thread(
        main, ["--target", ledger.target, "--token", "not-the-token", "stats"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "UNAUTHENTICATED" in err
    assert "not-the-token" not in err


async def test_balance_shows_the_subscription(
    ledger: Ledger, admin: AsyncCreditWalletClient, capsys: pytest.CaptureFixture[str]
) -> None:
    from creditwallet.v1 import billing_service_pb2 as bpb
    from creditwallet.v1 import common_pb2 as pb
    from google.protobuf.timestamp_pb2 import Timestamp

    user = new_user()
    await admin.ensure_account(user)
    start = Timestamp(seconds=int(ledger.clock.now().timestamp()))
    end = Timestamp(seconds=start.seconds + 30 * 86400)
    await admin.billing.SyncSubscription(
        bpb.SyncSubscriptionRequest(
            request_id=f"evt-{user}",
            subscription_id=f"sub-{user}",
            customer_id=f"cus-{user}",
            user_id=user,
            status=pb.SUBSCRIPTION_STATUS_PAST_DUE,
            price_id="price_monthly",
            period_credits_micros=250_000_000,
            current_period_start=start,
            current_period_end=end,
            event_created_at=start,
        )
    )
    assert await cli(ledger, "balance", user) == 0
    out = capsys.readouterr().out
    assert "subscription" in out
    assert "PAST_DUE" in out.upper().replace(" ", "_")
