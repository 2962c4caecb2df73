"""Fault (b): stop PostgreSQL mid-load and start it again; the server rides it out.

While the database is down the server answers UNAVAILABLE (safe to retry with the same
request_id) and its health turns NOT_SERVING; when it is back the same server process —
no restart — serves again: its pool replaces the dead connections and health says SERVING.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2

from tests import harness
from tests.faults import load
from tests.faults.cluster import PrivateCluster
from tests.faults.conftest import Scale
from tests.faults.serverproc import ServerProcess, free_port
from tests.harness import new_user

PREFIX = "pgrestart"
HEALTH_WAIT_SECONDS = 20.0
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
def cluster() -> Iterator[PrivateCluster]:
    private = PrivateCluster()
    try:
        yield private
    finally:
        private.delete()


@pytest_asyncio.fixture(loop_scope="session")
async def private_server(cluster: PrivateCluster, logs_dir: Path) -> AsyncIterator[ServerProcess]:
    """A server child on the private cluster's database, migrated by the owner role."""
    _, runtime = await harness.migrated_database(cluster.dsn, "cw_restart")
    proc = ServerProcess(
        runtime, logs_dir / "server.log", METRICS_ADDRESS=f"127.0.0.1:{free_port()}"
    )
    proc.start()
    try:
        await proc.wait_serving()
        yield proc
    finally:
        proc.stop()


def scrape(address: str) -> str:
    """The server subprocess's Prometheus text: the operator saw the outage too."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


async def wait_health(proc: ServerProcess, status: int) -> None:
    async with asyncio.timeout(HEALTH_WAIT_SECONDS):
        while await proc.health() != status:
            await asyncio.sleep(0.1)


async def test_postgres_stop_and_start_mid_load(
    cluster: PrivateCluster, private_server: ServerProcess, scale: Scale, record: list[str]
) -> None:
    proc = private_server
    admin = load.client(proc.target)
    agent = load.client(proc.target, "agent")
    seen: dict[str, int] = {}
    try:
        users = [new_user() for _ in range(scale.users)]
        await load.fund(admin, users, credits=1_000)
        ops = load.make_ops(PREFIX, users, scale.plan.ops)
        tally = load.Tally()
        pid = proc.pid

        async def fault() -> None:
            await load.when_acknowledged(tally, len(ops) // 3)
            await cluster.stop_async()
            await wait_health(proc, NOT_SERVING)
            unavailable = tally.codes["UNAVAILABLE"]
            async with asyncio.timeout(HEALTH_WAIT_SECONDS):
                while tally.codes["UNAVAILABLE"] == unavailable:  # callers meet the outage
                    await asyncio.sleep(0.05)
            seen["unavailable_during_outage"] = tally.codes["UNAVAILABLE"]
            await cluster.start_async()
            await wait_health(proc, SERVING)

        await load.with_fault(load.run_load(lambda attempt: agent, ops, scale.plan, tally), fault())
        assert proc.alive(), "the server died"
        assert proc.pid == pid, "the server was restarted"
        assert proc.starts == 1, "the server was restarted"
        await load.resolve(admin, tally)
        result = await load.audit(private_server.dsn, admin, PREFIX)
        load.check("stop+start PostgreSQL", ops, tally, result, record)
        assert seen["unavailable_during_outage"] > 0
        scraped = await asyncio.to_thread(scrape, proc.env["METRICS_ADDRESS"])
        assert 'creditwallet_rpcs_total{code="UNAVAILABLE",method="Debit"}' in scraped
        assert "creditwallet_database_up 1.0" in scraped
    finally:
        await admin.close()
        await agent.close()
    load.assert_no_secrets(proc.log_text(), "the server's log")
