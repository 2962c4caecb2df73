"""The CLI's team wallets and usage: members set|list, debit --member, usage table and chart."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest
from creditwallet.client.teams_cli import bar, day_totals
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.v1 import common_pb2 as pb
from creditwallet.v1 import wallet_service_pb2 as wpb

from tests.harness import Ledger, cli, new_user

pytestmark = pytest.mark.usefixtures("verified")

CREDIT = 1_000_000


async def test_members_debits_and_a_usage_report_with_its_chart(
    ledger: Ledger, admin: AsyncCreditWalletClient, capsys: pytest.CaptureFixture[str]
) -> None:
    user = new_user()
    await admin.grant(
        user, source=pb.LOT_SOURCE_PROMO, amount_micros=100 * CREDIT, create_account=True
    )
    await admin.set_agent_price("cli-writer", CREDIT // 2)
    assert await cli(ledger, "members", "set", user, "ana", "--cap", "3", "--period", "day") == 0
    assert re.search(r"ana\s+3\s+day\s+yes\s+0\s+0", capsys.readouterr().out)
    today = ledger.clock.now().date()
    yesterday = today - dt.timedelta(days=1)
    assert await cli(ledger, "debit", user, "--agent", "cli-writer", "--member", "ana") == 0
    assert await cli(ledger, "debit", user, "--amount", "2", "--member", "ana") == 0
    assert await cli(ledger, "debit", user, "--amount", "1", "--member", "ana") == 1
    assert "MEMBER_CAP_EXCEEDED" in capsys.readouterr().err
    assert await cli(ledger, "debit", user, "--amount", "1", "--member", "zed") == 1
    assert "MEMBER_NOT_FOUND" in capsys.readouterr().err
    assert await cli(ledger, "members", "list", user) == 0
    assert re.search(r"ana\s+3\s+day\s+yes\s+2\.5\s+0", capsys.readouterr().out)
    assert await cli(ledger, "history", user) == 0
    assert "cli-writer x1 by ana" in capsys.readouterr().out

    args = ["usage", user, "--from", yesterday.isoformat(), "--to", today.isoformat()]
    assert await cli(ledger, *args, "--by", "agent,day") == 0
    out = capsys.readouterr().out
    assert re.search(rf"{today}\s+-\s+2\s+2\s+0\s+1\s+0", out)
    assert re.search(rf"{today}\s+cli-writer\s+0\.5\s+0\.5\s+0\s+1\s+0", out)
    # The chart: one line per day of the range, an empty bar for a day without spend.
    assert re.search(rf"^{yesterday}\s+0\s*$", out, re.MULTILINE)
    assert re.search(rf"^{today}\s+2\.5\s+█{{40}}$", out, re.MULTILINE)
    assert await cli(ledger, "--json", *args, "--by", "member") == 0
    report = json.loads(capsys.readouterr().out)
    (group,) = report["groups"]
    assert (group["memberId"], group["netMicros"], group["debitCount"]) == ("ana", "2500000", "2")
    assert await cli(ledger, *args, "--by", "agent,planet") == 2


def test_the_chart_is_exact_integers_and_never_hides_a_small_day() -> None:
    first = dt.date(2026, 3, 1)
    groups = [
        wpb.UsageGroup(day="2026-03-01", net_micros=10),
        wpb.UsageGroup(day="2026-03-01", net_micros=5),
        wpb.UsageGroup(day="2026-03-03", net_micros=3_000_000),
    ]
    totals = day_totals(groups, first, dt.date(2026, 3, 3))
    assert totals == [(first, 15), (dt.date(2026, 3, 2), 0), (dt.date(2026, 3, 3), 3_000_000)]
    assert bar(15, 3_000_000) == "█"
    assert bar(0, 3_000_000) == ""
    assert bar(3_000_000, 3_000_000) == "█" * 40
    assert bar(1_500_000, 3_000_000, width=10) == "█" * 5
