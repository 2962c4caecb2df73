"""The operators' CLI against the real server: exit codes, units, messages, --json.

Exit codes: 0 done, 1 refused by the ledger, 2 usage, 3 no answer. Amounts in credits unless
--micros. Messages name the flags typed, not the request fields. --json is the protobuf JSON
mapping (camelCase, int64 as strings), the gateway's form.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess

import pytest
from creditwallet.client.arguments import build_parser
from creditwallet.client.cli import COMMANDS, main
from creditwallet.client.errors import AccountNotFound
from creditwallet.client.wallet import AsyncCreditWalletClient

from tests.client.scripted import INSUFFICIENT, TOKEN, FakeServer
from tests.harness import TOKENS, Ledger, cli, new_user

pytestmark = pytest.mark.usefixtures("verified")

CREDIT = 1_000_000


async def test_grant_debit_balance_history_in_credits(
    ledger: Ledger, admin: AsyncCreditWalletClient, capsys: pytest.CaptureFixture[str]
) -> None:
    user = new_user()
    await admin.ensure_account(user)
    assert await cli(ledger, "grant", user, "2.5", "--source", "promo") == 0
    assert await cli(ledger, "prices", "set", "writer", "0.25", "--unit", "page") == 0
    assert await cli(ledger, "debit", user, "--agent", "writer", "--quantity", "4") == 0
    out = capsys.readouterr().out
    assert re.search(r"granted\s+2\.5 credits", out)
    assert re.search(r"charged\s+1 credit\b", out)
    assert await cli(ledger, "--json", "balance", user) == 0
    balance = json.loads(capsys.readouterr().out)
    assert balance["availableMicros"] == "6500000"  # 5 trial + 2.5 - 1, int64 as a string
    assert await cli(ledger, "balance", user) == 0
    assert re.search(r"available\s+6\.5 credits", capsys.readouterr().out)
    assert await cli(ledger, "--json", "history", user) == 0
    history = json.loads(capsys.readouterr().out)
    assert [row["type"] for row in history["transactions"]] == [
        "TRANSACTION_TYPE_DEBIT",
        "TRANSACTION_TYPE_GRANT",
        "TRANSACTION_TYPE_GRANT",
    ]
    # A refusal answers in credits too, and exits 1.
    assert await cli(ledger, "debit", user, "--amount", "1000") == 1
    assert "INSUFFICIENT_CREDITS: 6.5 credits available, 1000 credits required" in (
        capsys.readouterr().err
    )


async def test_micros_only_with_the_flag(
    ledger: Ledger, admin: AsyncCreditWalletClient, capsys: pytest.CaptureFixture[str]
) -> None:
    user = new_user()
    await admin.ensure_account(user)
    assert await cli(ledger, "--micros", "debit", user, "--amount", "1500000") == 0
    out = capsys.readouterr().out
    assert re.search(r"charged\s+1500000 micros", out)
    assert re.search(r"available\s+3500000 micros", out)
    # Without the flag the same figure is credits: refused, and said in credits.
    assert await cli(ledger, "debit", user, "--amount", "1500000") == 1
    assert "3.5 credits available, 1500000 credits required" in capsys.readouterr().err
    # The flag may follow the command; refusals are then in micros too.
    assert await cli(ledger, "debit", user, "--amount", "4000000", "--micros") == 1
    assert "3500000 micros available, 4000000 micros required" in capsys.readouterr().err
    # A decimal is not a number of micros: a usage error naming the flag, nothing sent.
    assert await cli(ledger, "--micros", "debit", user, "--amount", "1.5") == 2
    assert "--amount" in capsys.readouterr().err
    assert (await admin.get_balance(user)).available_micros == 3_500_000


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["debit", "USER", "--amount", "0"], "--amount"),
        (["debit", "USER", "--amount", "1.0000001"], "--amount"),
        (["debit", "USER", "--amount", "-1"], "--amount"),
        (["grant", "USER", "2000000000", "--source", "promo"], "AMOUNT"),
        (["prices", "set", "a", "abc"], "PRICE"),
        (["debit", "USER", "--quantity", "2"], "--agent"),
        (["history", "USER", "--limit", "501"], "--limit"),
        (["frobnicate"], "COMMAND"),
    ],
)
async def test_usage_errors_exit_2_and_name_the_flag(
    ledger: Ledger, capsys: pytest.CaptureFixture[str], argv: list[str], names: str
) -> None:
    argv = [new_user() if word == "USER" else word for word in argv]
    assert await cli(ledger, *argv) == 2
    err = capsys.readouterr().err
    assert names in err or "invalid choice" in err
    assert "Traceback" not in err


async def test_server_refusals_name_flags_not_fields(
    ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli(ledger, "debit", new_user(), "--agent", "no spaces allowed") == 1
    err = capsys.readouterr().err
    assert err.startswith("error: INVALID_ARGUMENT: --agent must be 1-128 chars")
    assert "agent_id" not in err
    assert await cli(ledger, "prices", "set", "bad agent", "1") == 1
    err = capsys.readouterr().err
    assert "AGENT must be" in err
    assert "agent_id" not in err


async def test_grant_refuses_an_unknown_account_unless_create(
    ledger: Ledger, admin: AsyncCreditWalletClient, capsys: pytest.CaptureFixture[str]
) -> None:
    nobody = new_user()
    assert await cli(ledger, "grant", nobody, "5", "--source", "promo") == 1
    err = capsys.readouterr().err
    assert f"ACCOUNT_NOT_FOUND: no account for '{nobody}'" in err
    assert "--create" in err
    with pytest.raises(AccountNotFound):  # nothing was created
        await admin.get_balance(nobody)
    assert await cli(ledger, "grant", nobody, "5", "--source", "promo", "--create") == 0
    balance = await admin.get_balance(nobody)
    assert balance.available_micros == 5 * CREDIT  # the grant, and no trial lot


async def test_no_answer_exits_3_with_the_request_id_to_retry(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{sock.getsockname()[1]}"
    argv = ["--target", closed, "--token", TOKENS["admin"], "--timeout", "1"]
    argv += ["debit", "someone", "--amount", "1", "--request-id", "retry-me"]
    assert await asyncio.to_thread(main, argv) == 3
    err = capsys.readouterr().err
    assert err.startswith(f"error: UNAVAILABLE: no answer from the ledger at {closed}")
    assert "re-run with --request-id retry-me" in err


async def test_missing_and_wrong_tokens(
    ledger: Ledger, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ADMIN_TOKEN", raising=False)
    assert await asyncio.to_thread(main, ["--target", ledger.target, "stats"]) == 2
    assert "no token: set ADMIN_TOKEN or pass --token" in capsys.readouterr().err
    code = await asyncio.to_thread(
        main, ["--target", ledger.target, "--token", "not-the-token", "stats"]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "UNAUTHENTICATED" in err
    assert "not-the-token" not in err


async def test_json_refusals_are_json_on_stderr(
    ledger: Ledger, admin: AsyncCreditWalletClient, capsys: pytest.CaptureFixture[str]
) -> None:
    user = new_user()
    await admin.ensure_account(user)
    assert await cli(ledger, "--json", "debit", user, "--amount", "9") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    error = json.loads(captured.err)["error"]
    assert (error["code"], error["reason"]) == ("FAILED_PRECONDITION", "INSUFFICIENT_CREDITS")
    assert error["metadata"] == {"available_micros": "5000000", "required_micros": "9000000"}


async def test_prices_stats_verify_and_rollover_json(
    ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli(ledger, "prices", "set", "reader", "1") == 0
    assert await cli(ledger, "prices", "list") == 0
    assert "reader" in capsys.readouterr().out
    assert await cli(ledger, "stats") == 0
    assert await cli(ledger, "verify") == 0
    capsys.readouterr()
    assert await cli(ledger, "--json", "verify") == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    # The same form as the gateway's POST /rollover answer.
    assert await cli(ledger, "--json", "rollover") == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary) == {
        "period",
        "accountsProcessed",
        "creditsCarriedMicros",
        "creditsExpiredMicros",
        "holdsReleased",
        "chunks",
        "periodsSettled",
        "accountsCapped",
        "creditsCappedMicros",
    }
    assert all(isinstance(value, str) for value in summary.values())


async def test_ensure_is_safe_to_repeat_and_documented(
    ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    user = new_user()
    assert await cli(ledger, "ensure", user) == 0
    assert f"{user} (created)" in capsys.readouterr().out
    assert await cli(ledger, "ensure", user) == 0
    assert f"{user} (already existed)" in capsys.readouterr().out
    assert await asyncio.to_thread(main, ["ensure", "--help"]) == 0
    assert "Safe to repeat" in capsys.readouterr().out


def test_shell_completion_scripts(capsys: pytest.CaptureFixture[str]) -> None:
    for shell in ("bash", "zsh"):
        assert main(["completion", shell]) == 0
        script = capsys.readouterr().out
        for word in ("creditwallet", "rollover", "--micros", "top-up"):
            assert word in script
        if shell == "bash":
            checked = subprocess.run(["bash", "-n"], input=script, text=True, check=False)
            assert checked.returncode == 0


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
    assert re.search(r"subscription\s+past_due, period ends", out)


async def test_priority_agents_overdraft_and_a_past_balance(
    ledger: Ledger, admin: AsyncCreditWalletClient, capsys: pytest.CaptureFixture[str]
) -> None:
    user = new_user()
    await admin.ensure_account(user)  # 5 trial credits
    before = ledger.clock.now()
    ledger.clock.advance(seconds=1)
    assert (
        await cli(
            ledger,
            "grant",
            user,
            "3",
            "--source",
            "promo",
            "--priority",
            "10",
            "--agent",
            "cli-a",
            "--agent",
            "cli-b",
        )
        == 0
    )
    out = capsys.readouterr().out
    assert re.search(r"priority\s+10", out)
    assert re.search(r"agents\s+cli-a, cli-b", out)
    assert await cli(ledger, "balance", user, "--agent", "cli-a") == 0
    out = capsys.readouterr().out
    assert re.search(r"available for cli-a\s+8 credits", out)
    assert re.search(r"promo\s+3\s+3\s+.*\s10\s+cli-a,cli-b", out, re.IGNORECASE)
    assert await cli(ledger, "overdraft", "set", user, "2") == 0
    assert re.search(r"overdraft limit\s+2 credits", capsys.readouterr().out)
    assert await cli(ledger, "debit", user, "--amount", "7") == 0  # 5 trial, 2 owed
    # Available counts the restricted lot (3) less the debt (2).
    assert re.search(r"available\s+1 credit\b", capsys.readouterr().out)
    assert await cli(ledger, "debit", user, "--amount", "1", "--for-agent", "cli-a") == 0
    capsys.readouterr()
    assert await cli(ledger, "balance", user, "--as-of", before.isoformat()) == 0
    out = capsys.readouterr().out
    assert re.search(r"available\s+5 credits", out)
    assert "streak" not in out
    assert await cli(ledger, "grant", user, "1", "--source", "promo", "--priority", "101") == 2
    assert "--priority" in capsys.readouterr().err
    assert await cli(ledger, "overdraft", "set", user, "0") == 0
    assert re.search(r"debt\s+2 credits", capsys.readouterr().out)


# --- the grammar, and output against a scripted server (no ledger) -------------------------


def test_every_cli_command_has_a_function() -> None:
    parser = build_parser()
    samples = [
        ["balance", "u"],
        ["ensure", "u"],
        ["debit", "u", "--agent", "a"],
        ["grant", "u", "1", "--source", "top_up"],
        ["reverse", "u", "t"],
        ["history", "u"],
        ["prices", "set", "a", "0.5"],
        ["overdraft", "set", "u", "0"],
        ["prices", "list"],
        ["stats"],
        ["verify"],
        ["rollover"],
        ["streak", "u"],
        ["referral", "code", "u"],
        ["referral", "redeem", "u", "CODE"],
        ["events", "list"],
        ["events", "replay", "warehouse", "--failed"],
        ["events", "endpoints"],
        ["usage", "u", "--by", "agent,day"],
        ["members", "set", "u", "m", "--cap", "5"],
        ["members", "list", "u"],
    ]
    names = {parser.parse_args(sample).command_name for sample in samples}
    assert names == set(COMMANDS)


def test_global_options_work_after_the_command() -> None:
    args = build_parser().parse_args(["--timeout", "2", "balance", "u", "--json", "--micros"])
    assert (args.json, args.timeout, args.micros) == (True, 2.0, True)


async def test_cli_debits_exact_micros_and_prints_json(
    fake_server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--target", fake_server.target, "--token", TOKEN, "--json"]
    argv += ["debit", "alice", "--amount", "1.5", "--request-id", "cli-1"]
    exit_code = await asyncio.to_thread(main, argv)
    captured = capsys.readouterr()
    assert exit_code == 0
    assert json.loads(captured.out)["chargedMicros"] == "1500000"
    assert fake_server.wallet.requests[0].amount_micros == 1_500_000
    assert fake_server.wallet.requests[0].request_id == "cli-1"
    assert TOKEN not in captured.out + captured.err


async def test_cli_prints_credits_and_reports_errors(
    fake_server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--target", fake_server.target, "--token", TOKEN, "debit", "alice", "--amount", "1.5"]
    assert await asyncio.to_thread(main, argv) == 0
    out = capsys.readouterr().out
    assert re.search(r"charged\s+1\.5 credits", out)
    assert re.search(r"available\s+3\.5 credits", out)
    fake_server.wallet.failures = [INSUFFICIENT]
    assert await asyncio.to_thread(main, argv) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("error: INSUFFICIENT_CREDITS: ")
    assert TOKEN not in captured.out + captured.err
