"""The console's parts that need no browser: sessions and their bounds, the sign-in throttle,
form reading, chart geometry, configuration and the command line."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest
from creditwallet.client.console import charts, forms, usage
from creditwallet.client.console.config import ConsoleConfig
from creditwallet.client.console.sessions import SessionStore, SignInThrottle, same_secret
from creditwallet.core import limits
from creditwallet.core.settings import ConfigError
from creditwallet.v1 import common_pb2
from google.protobuf.timestamp_pb2 import Timestamp

TOKEN = "t" * limits.TOKEN_LENGTH_MIN


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sessions_are_bounded_in_number_lifetime_and_idle_time() -> None:
    clock = FakeClock()
    store = SessionStore(sessions_max=3, lifetime_seconds=100, idle_seconds=30, clock=clock)
    first, second, third = store.open(), store.open(), store.open()
    assert store.get(first.session_id) is first
    fourth = store.open()  # over the cap: the oldest goes
    assert len(store) == 3
    assert store.get(first.session_id) is None
    assert store.get(fourth.session_id) is fourth
    clock.now += 25
    assert store.get(second.session_id) is second  # used: not idle
    clock.now += 25
    assert store.get(third.session_id) is None  # unused for 50 s > 30 s
    assert store.get(second.session_id) is second
    for _ in range(2):
        clock.now += 20
        assert store.get(second.session_id) is second
    clock.now += 20  # 110 s after it began: over its lifetime, used or not
    assert store.get(second.session_id) is None
    store.close(fourth.session_id)
    assert store.get(fourth.session_id) is None
    assert store.get("") is None
    assert store.get("x" * 10_000) is None


def test_session_ids_and_csrf_tokens_are_random_and_distinct() -> None:
    store = SessionStore()
    sessions = [store.open() for _ in range(50)]
    secrets = {s.session_id for s in sessions} | {s.csrf_token for s in sessions}
    assert len(secrets) == 100
    assert all(len(s.session_id) >= limits.CONSOLE_SESSION_ID_BYTES for s in sessions)
    assert same_secret("abc", "abc")
    assert not same_secret("abc", "abd")
    assert not same_secret("abc", "abcd")


def test_sign_in_is_paused_after_too_many_wrong_tokens() -> None:
    clock = FakeClock()
    throttle = SignInThrottle(failures_max=3, pause_seconds=60, addresses_max=2, clock=clock)
    for _ in range(3):
        assert not throttle.blocked("a")
        throttle.failed("a")
    assert throttle.blocked("a")
    assert not throttle.blocked("b")
    clock.now += 61
    assert not throttle.blocked("a")
    throttle.failed("b")
    throttle.succeeded("b")
    assert not throttle.blocked("b")
    for address in ("c", "d", "e"):  # only the last addresses_max are remembered
        throttle.failed(address)
    assert len(throttle._failures) == 2


def test_forms_read_exact_credits_and_refuse_what_they_cannot_read() -> None:
    grant = forms.Grant.read(
        {"source": "promo", "amount": "12.000001", "expires_at": "2030-01-31T12:00", "note": "hi"}
    )
    assert grant.amount_micros == 12_000_001
    assert grant.expires_at == dt.datetime(2030, 1, 31, 12, tzinfo=dt.UTC)
    assert grant.note == {"note": "hi"}
    for bad in (
        {"source": "gift", "amount": "1"},
        {"source": "promo", "amount": "1e3"},
        {"source": "promo", "amount": "-1"},
        {"source": "promo", "amount": "0"},
        {"source": "promo", "amount": "0.0000001"},
        {"source": "promo", "amount": "nan"},
        {"source": "promo", "amount": str(10**10)},
        {"source": "promo", "amount": "1", "expires_at": "tomorrow"},
        {"source": "promo", "amount": "1", "expires_at": "2030-01-01T00:00+02:00"},
        {"source": "promo", "amount": "1", "note": "n" * (limits.CONSOLE_NOTE_LENGTH_MAX + 1)},
    ):
        with pytest.raises(forms.FormError):
            forms.Grant.read(bad)
    assert forms.Reversal.read({"transaction_id": "42", "amount": ""}).amount_micros is None
    with pytest.raises(forms.FormError):
        forms.Reversal.read({"transaction_id": "4 2"})
    price = forms.Price.read({"agent_id": "a", "price": "0.5", "active": "on"})
    assert (price.price_micros, price.active) == (500_000, True)


def _row(
    day: dt.date,
    kind: common_pb2.TransactionType.ValueType,
    amount: int,
    balance: int,
    agent: str = "",
) -> common_pb2.Transaction:
    created = Timestamp()
    created.FromDatetime(dt.datetime.combine(day, dt.time(12), tzinfo=dt.UTC))
    return common_pb2.Transaction(
        type=kind,
        amount_micros=amount,
        balance_after_micros=balance,
        agent_id=agent,
        created_at=created,
    )


def test_account_series_and_charts_keep_exact_micros() -> None:
    days = usage.window(dt.date(2026, 3, 30))
    assert len(days) == limits.CONSOLE_CHART_DAYS
    assert days[-1] == dt.date(2026, 3, 30)
    grant, debit = common_pb2.TRANSACTION_TYPE_GRANT, common_pb2.TRANSACTION_TYPE_DEBIT
    newest_first = [
        _row(days[-1], debit, -1, 6_999_999, "b"),
        _row(days[-1], debit, -3_000_000, 7_000_000, "a"),
        _row(days[10], grant, 10_000_000, 10_000_000),
    ]
    spent = {"b": [0] * 29 + [1], "a": [0] * 29 + [3_000_000]}
    series = usage.summarize(days, newest_first, True, spent)
    assert series.balance_micros[:10] == [0] * 10
    assert series.balance_micros[10:-1] == [10_000_000] * 19
    assert series.balance_micros[-1] == 6_999_999
    assert series.spent_by_agent == {"b": [0] * 29 + [1], "a": [0] * 29 + [3_000_000]}
    chart = charts.stacked("spent", days, series.spent_by_agent)
    titles = [bar.title for bar in chart.bars]
    assert titles == [
        "2026-03-30 a: 3 credits (3000000 micros)",
        "2026-03-30 b: 0.000001 credits (1 micros)",
    ]
    assert all(bar.height >= 1 for bar in chart.bars)
    many = {f"agent-{i}": [i + 1] + [0] * 29 for i in range(10)}
    legend = [name for _, name in charts.stacked("x", days, many).legend]
    assert len(legend) == limits.CONSOLE_CHART_AGENTS_MAX
    assert legend[-1] == charts.OTHER
    line = charts.line("balance", days, series.balance_micros)
    assert line.points[-1].title == "2026-03-30: 6.999999 credits (6999999 micros)"
    assert charts.line("empty", days, [0] * 30).empty


def test_the_configuration_names_what_is_wrong(tmp_path: Path) -> None:
    assert ConsoleConfig.from_env({"ADMIN_TOKEN": TOKEN}).port == 8090
    pem = tmp_path / "c.pem"
    pem.write_text("x")
    secure = ConsoleConfig.from_env(
        {"ADMIN_TOKEN": TOKEN, "CONSOLE_TLS_CERT_PATH": str(pem), "CONSOLE_TLS_KEY_PATH": str(pem)}
    )
    assert secure.secure_cookies
    assert ConsoleConfig.from_env({"ADMIN_TOKEN": TOKEN, "CONSOLE_BEHIND_TLS": "on"}).secure_cookies
    assert "****" in repr(secure.admin_token)
    assert TOKEN not in repr(secure)
    for env, names in (
        ({}, "ADMIN_TOKEN"),
        ({"ADMIN_TOKEN": "short"}, "ADMIN_TOKEN"),
        ({"ADMIN_TOKEN": TOKEN, "CONSOLE_ADDRESS": "nowhere"}, "CONSOLE_ADDRESS"),
        ({"ADMIN_TOKEN": TOKEN, "CONSOLE_TLS_CERT_PATH": str(pem)}, "CONSOLE_TLS_KEY_PATH"),
        ({"ADMIN_TOKEN": TOKEN, "CONSOLE_BEHIND_TLS": "yes"}, "CONSOLE_BEHIND_TLS"),
        ({"ADMIN_TOKEN": TOKEN, "LEDGER_TLS": "maybe"}, "LEDGER_TLS"),
    ):
        with pytest.raises(ConfigError, match=names):
            ConsoleConfig.from_env(env)


def test_the_command_has_help_version_and_one_line_errors() -> None:
    run = [sys.executable, "-m", "creditwallet.client.console"]
    helped = subprocess.run([*run, "--help"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0
    assert "CONSOLE_ADDRESS" in helped.stdout
    assert "ADMIN_TOKEN" in helped.stdout
    version = subprocess.run([*run, "--version"], capture_output=True, text=True, timeout=60)
    assert version.stdout.startswith("creditwallet-console ")
    missing = subprocess.run(
        run, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin"}
    )
    assert missing.returncode == 2
    assert missing.stderr.startswith("creditwallet-console: ADMIN_TOKEN is not set")
    assert "Traceback" not in missing.stderr
