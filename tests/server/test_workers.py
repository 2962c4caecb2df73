"""GRPC_WORKERS: several server processes on one port, started, stopped and failed as one.

Real processes (``python -m creditwallet.server`` with ``GRPC_WORKERS=2``) on a migrated
database: connections are spread over both workers
(each worker's own metrics endpoint counts the debits it served); SIGTERM stops all of them;
a worker that dies takes the server down with exit 1; a supervisor killed with SIGKILL leaves
no worker behind.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.core import limits
from creditwallet.core.settings import ConfigError
from creditwallet.server import db, workers
from creditwallet.server.config import ServerConfig
from creditwallet.v1 import wallet_service_pb2 as wpb
from creditwallet.v1 import wallet_service_pb2_grpc as wgrpc

from tests import harness
from tests.faults.serverproc import ServerProcess, free_port

_names = itertools.count(1)
TOKEN_ENV = {f"{scope.upper()}_TOKEN": token for scope, token in harness.TOKENS.items()}
GONE_SECONDS = 15.0


@pytest_asyncio.fixture(loop_scope="session")
async def empty_dsn(base_dsn: str) -> str:
    """A fresh migrated database, as the runtime role."""
    return await harness.fresh_database(base_dsn)


@pytest_asyncio.fixture(loop_scope="session")
async def two_workers(empty_dsn: str, tmp_path: Path) -> AsyncIterator[ServerProcess]:
    metrics_port = free_port()
    proc = ServerProcess(
        empty_dsn,
        tmp_path / "server.log",
        GRPC_WORKERS="2",
        METRICS_ADDRESS=f"127.0.0.1:{metrics_port}",
    )
    proc.env["METRICS_PORT_FOR_TEST"] = str(metrics_port)
    proc.start()
    try:
        await all_serving(proc)
        yield proc
    finally:
        proc.stop()


async def all_serving(proc: ServerProcess) -> None:
    """The first worker answers health checks before the others are up: wait for them all
    (the supervisor logs that it listens once every worker said it serves)."""
    await proc.wait_serving()
    deadline = time.monotonic() + GONE_SECONDS
    while '"gRPC server listening"' not in proc.log_text():
        assert time.monotonic() < deadline, proc.log_tail()
        await asyncio.sleep(0.05)


def worker_pids(proc: ServerProcess) -> list[int]:
    """The supervisor's children, less multiprocessing's resource tracker (Linux /proc)."""
    assert proc.pid is not None
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    return [
        int(pid)
        for pid in children
        if b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


def debits_served(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("creditwallet_debits_total")
    )


async def wait_gone(pids: list[int]) -> list[int]:
    deadline = time.monotonic() + GONE_SECONDS
    while time.monotonic() < deadline:
        alive = [p for p in pids if _running(p)]
        if not alive:
            return []
        await asyncio.sleep(0.1)
    return alive


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting for its parent to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


async def test_two_workers_share_one_port_and_stop_together(
    two_workers: ServerProcess,
) -> None:
    proc = two_workers
    log = proc.log_text()
    assert log.count('"migration applied"') == 0  # a server never migrates
    assert log.count('"worker serving"') == 2
    pids = worker_pids(proc)
    assert len(pids) == 2

    admin = AsyncCreditWalletClient(proc.target, harness.TOKENS["admin"], retries=0)
    user = harness.new_user()
    await admin.ensure_account(user)
    # Each channel with a subchannel pool of its own is a new connection (channels of one
    # process otherwise share one); the kernel spreads connections over both listeners.
    auth = (("authorization", f"Bearer {harness.TOKENS['agent']}"),)
    for n in range(24):
        options = [("grpc.use_local_subchannel_pool", 1)]
        async with grpc.aio.insecure_channel(proc.target, options=options) as channel:
            stub = wgrpc.WalletServiceStub(channel)
            request = wpb.DebitRequest(user_id=user, request_id=f"w-{n}", amount_micros=1_000)
            await stub.Debit(request, metadata=auth, timeout=10)
    report = await admin.verify_ledger()
    await admin.close()
    assert report.ok
    port = int(proc.env["METRICS_PORT_FOR_TEST"])
    served = [debits_served(port), debits_served(port + 1)]
    assert sum(served) == 24
    assert all(s > 0 for s in served), f"one worker served every connection: {served}"

    assert proc._proc is not None
    proc._proc.send_signal(signal.SIGTERM)
    assert proc._proc.wait(timeout=limits.GRPC_WORKERS_STOP_SECONDS + 5) == 0
    assert await wait_gone(pids) == []


async def test_a_worker_that_dies_takes_the_server_down(empty_dsn: str, tmp_path: Path) -> None:
    proc = ServerProcess(empty_dsn, tmp_path / "server.log", GRPC_WORKERS="2")
    proc.start()
    try:
        await all_serving(proc)
        first, second = worker_pids(proc)
        os.kill(first, signal.SIGKILL)
        assert proc._proc is not None
        code = await asyncio.to_thread(proc._proc.wait, limits.GRPC_WORKERS_STOP_SECONDS + 5)
        assert code == 1
        assert await wait_gone([second]) == []
        assert '"a worker exited; stopping the others"' in proc.log_text()
    finally:
        proc.stop()


async def test_a_schema_that_is_not_current_is_refused_before_any_worker(
    base_dsn: str, tmp_path: Path
) -> None:
    _, runtime = await db.provision(base_dsn, f"cw_workers_bare_{next(_names)}_{os.getpid()}")
    proc = ServerProcess(runtime, tmp_path / "server.log", GRPC_WORKERS="2")
    proc.start()
    assert proc._proc is not None
    code = await asyncio.to_thread(proc._proc.wait, 60)
    proc.stop()
    assert code == 1
    last = proc.log_text().strip().splitlines()[-1]
    assert last.startswith("creditwallet-server: the database's schema does not match"), last
    assert '"worker serving"' not in proc.log_text()


async def test_a_supervisor_killed_leaves_no_worker_behind(empty_dsn: str, tmp_path: Path) -> None:
    proc = ServerProcess(empty_dsn, tmp_path / "server.log", GRPC_WORKERS="2")
    proc.start()
    try:
        await all_serving(proc)
        pids = worker_pids(proc)
        proc.kill()
        assert await wait_gone(pids) == []
    finally:
        proc.stop()


def test_the_workers_share_the_connections_of_one_server() -> None:
    for count in range(1, limits.GRPC_WORKERS_MAX + 1):
        size = workers.pool_size(count)
        assert limits.DB_POOL_SIZE_WORKER_MIN <= size <= limits.DB_POOL_SIZE_MAX
        assert count * size <= limits.DB_CONNECTIONS_PER_SERVER_MAX


@pytest.mark.parametrize("value", ["0", str(limits.GRPC_WORKERS_MAX + 1), "two", "-1", "²"])
def test_grpc_workers_must_be_a_small_positive_count(value: str) -> None:
    env = {**TOKEN_ENV, "GRPC_WORKERS": value}
    with pytest.raises(ConfigError, match="GRPC_WORKERS must be 1-"):
        ServerConfig.from_env(env)


def test_grpc_workers_defaults_to_one_per_core() -> None:
    env = {**TOKEN_ENV}
    expected = min(len(os.sched_getaffinity(0)), limits.GRPC_WORKERS_MAX)
    assert ServerConfig.from_env(env).grpc_workers == expected
    assert ServerConfig.from_env({**env, "GRPC_WORKERS": "1"}).grpc_workers == 1


def test_a_bad_grpc_workers_is_one_line_and_exit_2() -> None:
    env = {**os.environ, **TOKEN_ENV, "GRPC_WORKERS": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "creditwallet.server"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"creditwallet-server: GRPC_WORKERS must be 1-{limits.GRPC_WORKERS_MAX} server "
        f"processes (default: one per core, {min(len(os.sched_getaffinity(0)), 10)} here), "
        "not '0'"
    ]
