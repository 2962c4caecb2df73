"""The same guarantees with group commit off and without prepared statements (PgBouncer mode),
through a client that balances round-robin over the target's addresses."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from creditwallet.client import errors as cw
from creditwallet.core.settings import ConfigError
from creditwallet.server import app
from creditwallet.server.clock import ManualClock
from creditwallet.server.config import ServerConfig
from creditwallet.v1 import common_pb2 as pb

from tests import harness
from tests.harness import TOKENS, new_user


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def plain_ledger(base_dsn: str, data_dir: Path) -> AsyncIterator[harness.Ledger]:
    dsn = await harness.fresh_database(base_dsn)
    config = dataclasses.replace(
        harness.config(data_dir), debit_batching=False, statement_cache_size=0
    )
    clock = ManualClock(harness.real_now())
    running = await app.start(config, dsn=dsn, clock=clock, address="127.0.0.1:0")
    ledger = harness.Ledger(dsn, running, clock)
    yield ledger
    report = await ledger.client("admin").verify_ledger()
    assert report.ok, list(report.violations)
    await ledger.close()


async def test_per_transaction_debits_never_overdraw_and_apply_once(
    plain_ledger: harness.Ledger,
) -> None:
    assert plain_ledger.running.runtime.debits.batch_max == 1
    admin = plain_ledger.client("admin", round_robin=True)
    user = new_user()
    await admin.ensure_account(user)
    await admin.grant(user, 15 * 1_000_000, pb.LOT_SOURCE_TOP_UP)  # 20 credits
    clients = [plain_ledger.client("agent", round_robin=True) for _ in range(6)]

    async def spend(i: int) -> bool:
        try:
            await clients[i % 6].debit(user, amount_micros=1_000_000, request_id=f"p-{i % 40}")
        except cw.InsufficientCredits:
            return False
        return True

    outcomes = await asyncio.gather(*(spend(i) for i in range(120)))  # 40 keys, 3 sends each
    state = await admin.get_balance(user)
    assert state.available_micros == 0
    debits = await admin.list_transactions(user, page_size=500, type=pb.TRANSACTION_TYPE_DEBIT)
    assert len(debits.transactions) == 20
    assert sum(outcomes) == 60  # the 20 applied keys, each answered 3 times (2 replays)


def test_config_reads_modes_and_refuses_bad_numbers() -> None:
    env = {
        "AGENT_TOKEN": TOKENS["agent"],
        "BILLING_TOKEN": TOKENS["billing"],
        "ADMIN_TOKEN": TOKENS["admin"],
        "DEBIT_BATCHING": "off",
        "DB_STATEMENT_CACHE_SIZE": "0",
    }
    config = ServerConfig.from_env(env)
    assert (config.debit_batching, config.statement_cache_size) == (False, 0)
    with pytest.raises(ConfigError, match="DB_STATEMENT_CACHE_SIZE"):
        ServerConfig.from_env({**env, "DB_STATEMENT_CACHE_SIZE": "-1"})
    with pytest.raises(ConfigError, match="ADMIN_TOKEN"):
        ServerConfig.from_env({k: v for k, v in env.items() if k != "ADMIN_TOKEN"})
