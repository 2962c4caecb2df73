"""``creditwallet debit --file``: a JSON Lines file of debits, sent with BatchDebit.

Each line is applied, replayed or refused on its own (exit 1 when any is refused); a line
without a request_id gets one from its content, so running the file again applies nothing
twice; a file that does not parse is a usage error and sends nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from creditwallet.client.wallet import AsyncCreditWalletClient

from tests.harness import Ledger, cli, new_user

pytestmark = pytest.mark.usefixtures("verified")

CREDIT = 1_000_000


def jsonl(path: Path, *lines: object) -> str:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return str(path)


async def test_a_file_of_debits_applies_each_line_once(
    ledger: Ledger,
    admin: AsyncCreditWalletClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    user, other = new_user(), new_user()
    await admin.ensure_account(user)
    await admin.ensure_account(other)
    await admin.set_agent_price("file-agent", CREDIT // 10)
    path = jsonl(
        tmp_path / "debits.jsonl",
        "# a comment, then a blank line",
        "",
        {"user_id": user, "amount": "1.5"},
        {"userId": other, "agentId": "file-agent", "quantity": "3", "metadata": {"job": "x"}},
        {"user_id": user, "amount_micros": 500000, "request_id": "mine-1"},
    )
    assert await cli(ledger, "debit", "--file", path) == 0
    out = capsys.readouterr().out
    assert out.count("applied") >= 3
    assert "mine-1" in out
    assert (await admin.get_balance(user)).available_micros == 3 * CREDIT
    assert (await admin.get_balance(other)).available_micros == 5 * CREDIT - 3 * CREDIT // 10

    # Again: every line is a replay (the generated request_ids come from the lines).
    assert await cli(ledger, "--json", "debit", "--file", path) == 0
    reply = json.loads(capsys.readouterr().out)
    assert [r["debit"].get("replayed") for r in reply["results"]] == [True, True, True]
    assert (await admin.get_balance(user)).available_micros == 3 * CREDIT


async def test_a_refused_line_exits_1_and_leaves_the_others_applied(
    ledger: Ledger,
    admin: AsyncCreditWalletClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    user = new_user()
    await admin.ensure_account(user)
    path = jsonl(
        tmp_path / "d.jsonl",
        {"user_id": user, "amount": "9"},
        {"user_id": user, "amount": "1"},
        {"user_id": "no spaces allowed", "amount": "1"},
    )
    assert await cli(ledger, "debit", "--file", path) == 1
    out = capsys.readouterr().out
    assert "refused: INSUFFICIENT_CREDITS" in out
    assert "refused: INVALID_ARGUMENT" in out
    assert "1 applied or replayed, 2 refused" in out
    assert (await admin.get_balance(user)).available_micros == 4 * CREDIT


@pytest.mark.parametrize(
    ("lines", "argv", "says"),
    [
        (['{"user_id": "u", "amount": "1"', ""], [], "line 1"),
        (["[1, 2]"], [], "line 1: each line is one JSON object"),
        (['{"user_id": "u", "amount": "1"}', '{"user": "u"}'], [], "line 2"),
        (['{"user_id": "u", "amount": "x"}'], [], "line 1: amount"),
        (['{"user_id": "u", "amount": "1.5"}'], ["--micros"], "line 1"),
        (["# only a comment"], [], "no debits"),
        (['{"user_id": "u", "amount": "1"}'], ["USER"], "drop USER"),
        (['{"user_id": "u", "amount": "1"}'], ["--request-id", "r"], "drop --request-id"),
    ],
)
async def test_a_file_that_does_not_parse_sends_nothing(
    ledger: Ledger,
    admin: AsyncCreditWalletClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    lines: list[str],
    argv: list[str],
    says: str,
) -> None:
    user = new_user()
    await admin.ensure_account(user)
    path = jsonl(tmp_path / "bad.jsonl", *(line.replace('"u"', f'"{user}"') for line in lines))
    typed = [user if word == "USER" else word for word in argv]
    assert await cli(ledger, "debit", *typed, "--file", path) == 2
    err = capsys.readouterr().err
    assert says in err
    assert "Traceback" not in err
    assert (await admin.get_balance(user)).available_micros == 5 * CREDIT


async def test_debit_still_needs_a_user_and_a_cost_without_a_file(
    ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli(ledger, "debit", "--amount", "1") == 2
    assert "USER" in capsys.readouterr().err
    assert await cli(ledger, "debit", new_user()) == 2
    assert "--agent --amount" in capsys.readouterr().err
    assert await cli(ledger, "debit", "--file", "/nonexistent/file.jsonl") == 2
    assert "No such file" in capsys.readouterr().err
