"""Session fixtures: the embedded cluster and template; a ledger server per test module."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.server import db
from hypothesis import HealthCheck, settings

from tests import events_kit, harness

os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())

# Property tests are reproducible and bounded: a fixed seed (derandomize), a fixed number of
# examples per test, no wall-clock deadline (a shared 2-core machine is slow at times), and no
# example database, so a run never depends on an earlier one. HYPOTHESIS_PROFILE=deep explores more.
settings.register_profile(
    "credit-wallet",
    derandomize=True,
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("deep", settings.get_profile("credit-wallet"), max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "credit-wallet"))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Short path: the cluster's unix socket lives under it (108-byte limit). The cluster
    # (about 1 GB after a run) is deleted at exit, after the embedded server's own exit hook
    # has stopped it (hooks run last registered first); KEEP_TEST_DATA=1 keeps it.
    path = Path(tempfile.mkdtemp(prefix="cw-", dir="/tmp"))
    if not os.environ.get("KEEP_TEST_DATA"):
        atexit.register(shutil.rmtree, path, True)
    return path


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def base_dsn(data_dir: Path) -> str:
    dsn = db.start_embedded(data_dir)
    await harness.prepare_template(dsn)
    return dsn


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def ledger(base_dsn: str, data_dir: Path) -> AsyncIterator[harness.Ledger]:
    running = await harness.start_ledger(base_dsn, data_dir)
    yield running
    await running.close()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def admin(ledger: harness.Ledger) -> AsyncCreditWalletClient:
    return ledger.client("admin")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def agent(ledger: harness.Ledger) -> AsyncCreditWalletClient:
    return ledger.client("agent")


@pytest_asyncio.fixture(loop_scope="session")
async def verified(ledger: harness.Ledger, admin: AsyncCreditWalletClient) -> AsyncIterator[None]:
    """Every scenario ends with VerifyLedger clean (the invariants of docs/design.md)."""
    yield
    report = await admin.verify_ledger()
    assert report.ok, [f"{v.invariant} {v.user_id}: {v.detail}" for v in report.violations]


@pytest_asyncio.fixture(loop_scope="session")
async def receiver() -> AsyncIterator[events_kit.Receiver]:
    """A webhook receiver (tests/events_kit.py) for the test, up until it is taken down."""
    running = await events_kit.Receiver(events_kit.new_secret()).start()
    yield running
    await running.stop()
