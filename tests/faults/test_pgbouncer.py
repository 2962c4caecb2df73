"""Two replicas through a real PgBouncer in transaction mode: the same exactly-once figures.

Two migration runs start together on an empty database through PgBouncer, as the owner role
(each file takes a transaction-level lock, so each is applied once even there); then the two
replicas start through it as the runtime role, with asyncpg's statement cache off (PgBouncer
before 1.21 cannot follow named prepared statements), and PgBouncer holding fewer server
connections than the two pools together, so their transactions are multiplexed.
Then the two direct scenarios run through it: every request_id sent to both replicas at once,
and a load during which one replica is killed with SIGKILL and the callers move to the other.

``make faults`` only: the target installs Debian's ``pgbouncer`` when it is missing.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.server import db, migrate

from tests import harness
from tests.faults import load
from tests.faults.bouncer import Bouncer, binary
from tests.faults.conftest import Scale
from tests.faults.serverproc import ServerProcess
from tests.faults.test_replicas import race_both_replicas

_names = itertools.count(1)


@pytest.fixture
def bouncer(request: pytest.FixtureRequest, base_dsn: str) -> Iterator[Bouncer]:
    if not request.config.getoption("--faults-full", default=False):
        pytest.skip("PgBouncer scenarios run with make faults (which installs pgbouncer)")
    assert binary() is not None, "pgbouncer is missing: make faults installs it"
    running = Bouncer(base_dsn, ("postgres", db.OWNER_ROLE, db.RUNTIME_LOGIN))
    try:
        yield running
    finally:
        running.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def behind_bouncer(
    base_dsn: str, bouncer: Bouncer, logs_dir: Path
) -> AsyncIterator[tuple[list[ServerProcess], str]]:
    name = f"cw_bouncer_{next(_names)}"
    _, runtime = await db.provision(base_dsn, name)
    # As `creditwallet-migrate up` connects with DB_STATEMENT_CACHE_SIZE=0.
    through_owner = bouncer.dsn(name, db.OWNER_ROLE)
    migrators = [await asyncpg.connect(through_owner, statement_cache_size=0) for _ in range(2)]
    try:
        applied = await asyncio.gather(*(migrate.migrate(conn) for conn in migrators))
    finally:
        for conn in migrators:
            await conn.close()
    names = [n for _, n, _ in migrate.load_migrations()]
    assert sorted(applied[0] + applied[1]) == sorted(names), "each file applied by one run"
    through = bouncer.dsn(name, db.RUNTIME_LOGIN)
    procs = [
        ServerProcess(through, logs_dir / f"bounced-{i}.log", DB_STATEMENT_CACHE_SIZE="0")
        for i in range(2)
    ]
    for proc in procs:
        proc.start()
    try:
        await asyncio.gather(*(proc.wait_serving() for proc in procs))
        yield procs, runtime
    finally:
        for proc in procs:
            proc.stop()


async def test_two_replicas_through_pgbouncer_apply_each_debit_once(
    behind_bouncer: tuple[list[ServerProcess], str], scale: Scale, record: list[str]
) -> None:
    replicas, direct = behind_bouncer
    await race_both_replicas(replicas, direct, scale, record, "2 replicas via PgBouncer")

    # Then load on both, one killed mid-load: callers move to the other, same request_ids.
    admin = load.client(replicas[1].target)
    agents = [load.client(p.target, "agent") for p in replicas]
    prefix = "bounced"
    try:
        users = [harness.new_user() for _ in range(scale.users)]
        await load.fund(admin, users, credits=1_000)
        ops = load.make_ops(prefix, users, scale.plan.ops)
        tally = load.Tally()

        def client_for(attempt: int) -> AsyncCreditWalletClient:
            return agents[1] if attempt > 0 or replicas[0].alive() is False else agents[0]

        async def fault() -> None:
            await load.when_acknowledged(tally, len(ops) // 3)
            replicas[0].kill()

        await load.with_fault(load.run_load(client_for, ops, scale.plan, tally), fault())
        await load.resolve(admin, tally)
        result = await load.audit(direct, admin, prefix)
        load.check("kill -9 one of 2 replicas via PgBouncer", ops, tally, result, record)
    finally:
        for client in (admin, *agents):
            await client.close()
    for proc in replicas:
        load.assert_no_secrets(proc.log_text(), "a replica's log")
