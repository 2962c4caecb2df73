"""One logging set-up for both processes: formats, fields, masked configs, no noise.

JSON lines carry RFC 3339 UTC times with milliseconds and the request id of the call being
served; text lines keep the structured fields; the configuration line masks secrets and the
DSN's password; the gateway honours LOG_FORMAT and LOG_LEVEL as the server does; a client
that hangs up mid-call leaves no traceback in either process's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time

import grpc
import pytest
from creditwallet.core import logs
from creditwallet.core.logs import JsonFormatter, LogSettings, TextFormatter
from creditwallet.core.settings import Secret, describe
from creditwallet.server import interceptor
from creditwallet.server.config import ServerConfig
from creditwallet.v1 import wallet_service_pb2 as wpb

from tests import stripe_fakes as sf
from tests.harness import TOKENS, Ledger, new_user

RFC3339_MILLIS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
GATEWAY_START_SECONDS = 30.0


def _record(message: str, **fields: object) -> logging.LogRecord:
    record = logging.LogRecord("creditwallet.test", logging.INFO, __file__, 1, message, (), None)
    record.__dict__.update(fields)
    return record


def test_json_lines_have_millisecond_utc_times_and_the_request_id() -> None:
    with logs.request_context("run-9f1c"):
        line = JsonFormatter().format(_record("rpc", method="Debit", duration_ms=2.5))
    entry = json.loads(line)
    assert RFC3339_MILLIS.match(entry["time"]), entry["time"]
    assert entry["request_id"] == "run-9f1c"
    assert (entry["level"], entry["logger"], entry["message"]) == (
        "INFO",
        "creditwallet.test",
        "rpc",
    )
    assert (entry["method"], entry["duration_ms"]) == ("Debit", 2.5)
    # Outside a call there is no request id, rather than an empty one.
    assert "request_id" not in json.loads(JsonFormatter().format(_record("idle")))


def test_text_lines_keep_the_fields() -> None:
    line = TextFormatter().format(
        _record("rollover finished", accounts_processed=3, period="2026-11", note="two words")
    )
    time, level, rest = line.split(" ", 2)
    assert RFC3339_MILLIS.match(time)
    assert level == "INFO"
    assert rest.strip() == (
        'creditwallet.test: rollover finished accounts_processed=3 period=2026-11 note="two words"'
    )


def test_the_configuration_line_masks_secrets_and_is_not_a_repr() -> None:
    config = ServerConfig.from_env(
        {
            "AGENT_TOKEN": "agent-secret-value" + "a" * 20,
            "BILLING_TOKEN": "billing-secret-value" + "b" * 20,
            "ADMIN_TOKEN": "admin-secret-value" + "c" * 20,
            "DATABASE_URL": "postgresql://ledger:db-password@db.internal:5432/wallet",
        }
    )
    fields = describe(config)
    assert fields["tokens"] == "agent(agent)=****,billing(billing)=****,admin(admin)=****"
    assert fields["database_url"] == "postgresql://ledger:****@db.internal:5432/wallet"
    assert fields["grpc_address"] == "127.0.0.1:50051"
    line = TextFormatter().format(_record("server configuration", **fields))
    for secret in ("agent-secret-value", "billing-secret-value", "db-password", "Secret("):
        assert secret not in line
    assert describe(sf.gateway_config("h:1", "http://s", "b" * 20))["webhook_secrets"] == (
        "****,****"
    )
    assert Secret("x").value == "x"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _gateway_lines(extra: dict[str, str]) -> list[str]:
    """Start the real gateway with ``extra``, read its log until it listens, stop it."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "BILLING_TOKEN": TOKENS["billing"],
        "STRIPE_WEBHOOK_SECRET": sf.SECRETS[0],
        "CRON_SECRET": sf.CRON_SECRET,
        "STRIPE_MODE": "test",
        "GATEWAY_ADDRESS": f"127.0.0.1:{_free_port()}",
        **extra,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "creditwallet.gateway"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    host, port = env["GATEWAY_ADDRESS"].split(":")
    try:
        deadline = time.monotonic() + GATEWAY_START_SECONDS
        while True:
            with contextlib.suppress(OSError), socket.create_connection((host, int(port)), 1):
                break
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the gateway did not start listening"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=GATEWAY_START_SECONDS)
    return [line for line in err.splitlines() if line.strip()]


def test_the_gateway_honours_log_format_and_log_level() -> None:
    lines = _gateway_lines({"LOG_FORMAT": "json"})
    entries = [json.loads(line) for line in lines]  # every line is JSON
    config = next(e for e in entries if e["message"] == "gateway configuration")
    assert config["logger"] == "creditwallet.gateway"
    assert config["billing_token"] == "****"
    assert config["cron_secret"] == "****"
    assert RFC3339_MILLIS.match(config["time"])
    assert TOKENS["billing"] not in "\n".join(lines)
    assert sf.CRON_SECRET not in "\n".join(lines)
    quiet = _gateway_lines({"LOG_FORMAT": "json", "LOG_LEVEL": "WARNING"})
    assert [json.loads(line)["level"] for line in quiet if '"level"' in line] == []


def _tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.exc_info or "Traceback" in r.getMessage()
    ]


async def test_a_webhook_sender_that_hangs_up_leaves_no_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    runner, url = await sf.start_gateway(sf.gateway_config("127.0.0.1:1", "http://x", "b" * 20))
    try:
        port = int(url.rsplit(":", 1)[1])
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /stripe/webhook HTTP/1.1\r\nHost: gateway\r\nContent-Length: 1000\r\n\r\n{"
        )
        await writer.drain()
        writer.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while not any("hung up" in r.getMessage() for r in caplog.records):
            assert loop.time() < deadline, "the gateway never noticed the hang-up"
            await asyncio.sleep(0.05)
    finally:
        await runner.cleanup()
    assert _tracebacks(caplog) == []


async def test_rpc_callers_that_hang_up_leave_no_traceback(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    admin = ledger.client("admin")
    user = new_user()
    await admin.ensure_account(user)
    async with grpc.aio.insecure_channel(ledger.target) as channel:
        debit = channel.unary_unary(
            "/creditwallet.v1.WalletService/Debit",
            request_serializer=wpb.DebitRequest.SerializeToString,
            response_deserializer=wpb.DebitResponse.FromString,
        )
        metadata = (("authorization", f"Bearer {TOKENS['agent']}"),)
        calls = []
        for number in range(40):
            request = wpb.DebitRequest(user_id=user, request_id=f"hangup-{number}", amount_micros=1)
            call = debit(request, metadata=metadata, timeout=0.001 * (1 + number % 5))
            calls.append(call)
            if number % 2:
                call.cancel()  # hung up before the answer
        for call in calls:
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
                await call
    await asyncio.sleep(0.5)  # let the shielded work of cancelled calls finish and log
    assert _tracebacks(caplog) == []
    assert (await admin.verify_ledger()).ok


def test_grpcs_error_for_a_caller_gone_is_a_debug_line_and_other_errors_stay(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The race above, made to happen: gRPC's own records, as its server writes them."""
    interceptor.quiet_callers_gone()
    interceptor.quiet_callers_gone()  # once per process, however often servers start
    core = logging.getLogger("grpc._cython.cygrpc")
    assert sum(type(f).__name__ == "_CallerGoneFilter" for f in core.filters) == 1
    method = "/creditwallet.v1.WalletService/Debit"
    caplog.set_level(logging.DEBUG)
    for failure in ("ExecuteBatchError raised in core", "Unexpected [ValueError] raised"):
        try:
            raise RuntimeError("from core")
        except RuntimeError:
            core.exception(f"{failure} by servicer method [{method}]")
    gone, other = caplog.records
    assert (gone.levelno, gone.exc_info) == (logging.DEBUG, None)
    assert gone.getMessage() == (
        f"caller gone before its answer was sent: ExecuteBatchError raised in core by "
        f"servicer method [{method}]"
    )
    assert other.levelno == logging.ERROR
    assert other.exc_info is not None
    caplog.clear()
    caplog.set_level(logging.INFO)
    core.setLevel(logging.INFO)
    try:
        core.error("ExecuteBatchError raised in core by servicer method [%s]", method)
    finally:
        core.setLevel(logging.NOTSET)
    assert caplog.records == []


def test_log_settings_default_and_refuse() -> None:
    assert LogSettings.from_env({}) == LogSettings("json", "INFO")
    assert LogSettings.from_env({"LOG_FORMAT": "TEXT", "LOG_LEVEL": "debug"}) == LogSettings(
        "text", "DEBUG"
    )
