"""The operator's view: metrics, the access log, health that follows the database,
and secrets that never reach a log.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import urllib.request
from pathlib import Path

import grpc
import pytest
from creditwallet.client import errors as cw
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.core import logs
from creditwallet.core.settings import ConfigError
from creditwallet.server import app
from creditwallet.server.config import ServerConfig
from creditwallet.server.health import DatabaseHealth
from creditwallet.v1 import common_pb2 as pb
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2

from tests import harness
from tests.harness import TOKENS, Ledger, new_user

CREDIT = 1_000_000
SCRAPE_TIMEOUT_SECONDS = 5.0
UNREACHABLE_DSN = "postgresql://postgres:@/postgres?host=/nonexistent-socket-dir"


def _scrape(port: int) -> str:
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_SECONDS) as reply:
        return str(reply.read().decode())


async def test_metrics_are_served_on_metrics_address(base_dsn: str, data_dir: Path) -> None:
    config = dataclasses.replace(harness.config(data_dir), metrics_address="127.0.0.1:0")
    dsn = await harness.fresh_database(base_dsn)
    running = await app.start(config, dsn=dsn, address="127.0.0.1:0")
    try:
        assert running.metrics_endpoint is not None
        user = new_user()
        async with AsyncCreditWalletClient(
            f"127.0.0.1:{running.port}", TOKENS["admin"], retries=0
        ) as admin:
            await admin.ensure_account(user)
            await admin.debit(user, amount_micros=CREDIT)
            with pytest.raises(cw.InsufficientCredits):
                await admin.debit(user, amount_micros=100 * CREDIT)
        text = await asyncio.to_thread(_scrape, running.metrics_endpoint.port)
    finally:
        await running.stop(grace_seconds=1.0)
    for expected in (
        'creditwallet_rpcs_total{code="OK",method="Debit"}',
        'creditwallet_rpcs_total{code="FAILED_PRECONDITION",method="Debit"}',
        'creditwallet_rpc_seconds_bucket{le="0.005",method="Debit"}',
        "creditwallet_debits_total",
        "creditwallet_debited_micros_total",
        "creditwallet_insufficient_credits_total",
        "creditwallet_db_pool_size",
        "creditwallet_db_pool_idle",
        "creditwallet_db_pool_max 20.0",
        "creditwallet_database_up 1.0",
    ):
        assert expected in text, expected


def test_config_reads_metrics_address_and_log_level() -> None:
    env = {f"{scope.upper()}_TOKEN": token for scope, token in TOKENS.items()}
    plain = ServerConfig.from_env(env)
    assert plain.metrics_address is None  # unset = no metrics endpoint
    assert plain.log_level == "INFO"
    chosen = ServerConfig.from_env(
        {**env, "METRICS_ADDRESS": "127.0.0.1:9464", "LOG_LEVEL": "debug"}
    )
    assert chosen.metrics_address == "127.0.0.1:9464"
    assert chosen.log_level == "DEBUG"
    with pytest.raises(ConfigError, match="METRICS_ADDRESS"):
        ServerConfig.from_env({**env, "METRICS_ADDRESS": "9464"})
    with pytest.raises(ConfigError, match="LOG_LEVEL"):
        ServerConfig.from_env({**env, "LOG_LEVEL": "chatty"})


async def test_health_turns_not_serving_when_the_database_is_unreachable() -> None:
    servicer = health_aio.HealthServicer()
    probe = DatabaseHealth(UNREACHABLE_DSN, servicer, ["creditwallet.v1.WalletService"])
    await probe.set(True)
    assert await probe.probe() is False
    await probe.set(await probe.probe())
    for service in ("", "creditwallet.v1.WalletService"):
        reply = await servicer.Check(health_pb2.HealthCheckRequest(service=service), None)  # type: ignore[arg-type]
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
    await probe.stop()


async def test_health_probe_reaches_a_live_database(ledger: Ledger) -> None:
    assert ledger.running.probe.serving is True
    probe = DatabaseHealth(ledger.dsn, health_aio.HealthServicer(), [])
    try:
        assert await probe.probe() is True
        assert await probe.probe() is True  # and again, on the same connection
    finally:
        await probe.stop()


def _everything_logged(caplog: pytest.LogCaptureFixture) -> str:
    """Each record as the JSON formatter writes it: message, extras and any traceback."""
    formatter = logs.JsonFormatter()
    return "\n".join(formatter.format(record) for record in caplog.records)


async def test_access_log_and_no_secret_in_any_log(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    admin, agent = ledger.client("admin"), ledger.client("agent")
    user = new_user()
    await admin.ensure_account(user)
    await admin.grant(user, CREDIT, pb.LOT_SOURCE_PROMO)
    await agent.debit(user, amount_micros=1_000, request_id="access-log-1")
    with pytest.raises(cw.InsufficientCredits):
        await agent.debit(user, amount_micros=100 * CREDIT, request_id="access-log-2")
    async with grpc.aio.insecure_channel(ledger.target) as channel:  # refused scopes log too
        call = channel.unary_unary(
            "/creditwallet.v1.AdminService/GetStats",
            request_serializer=bytes,
            response_deserializer=bytes,
        )
        for token in (TOKENS["agent"], TOKENS["billing"], "not-a-token"):
            with pytest.raises(grpc.aio.AioRpcError):
                await call(b"", metadata=(("authorization", f"Bearer {token}"),), timeout=5)
    logging.getLogger("tests").info("config %r", harness.config(Path("/tmp")))

    accesses = [r for r in caplog.records if r.getMessage() == "rpc"]
    debit = [r for r in accesses if getattr(r, "request_id", "") == "access-log-1"]
    assert len(debit) == 1
    assert (debit[0].method, debit[0].code) == ("Debit", "OK")  # type: ignore[attr-defined]
    assert debit[0].duration_ms >= 0  # type: ignore[attr-defined]
    refused = [r for r in accesses if getattr(r, "request_id", "") == "access-log-2"]
    assert refused[0].code == "FAILED_PRECONDITION"  # type: ignore[attr-defined]
    assert any(getattr(r, "code", "") == "PERMISSION_DENIED" for r in accesses)
    text = _everything_logged(caplog)
    for scope, token in TOKENS.items():
        assert token not in text, f"the {scope} token was logged"
