"""The test harness: a real embedded PostgreSQL, a migrated template, a real gRPC server.

One cluster per test session; the schema is migrated once into a template database, as the
owner role, and each test module gets a fresh copy (``CREATE DATABASE ... TEMPLATE``), so
modules never see each other's rows. Servers and tests connect to it as the runtime role,
as in production: what the tests do, a compromised server could do, and no more.
The server runs in the test's event loop on 127.0.0.1 port 0 with a
``ManualClock`` the tests move instead of sleeping.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import itertools
import uuid
from pathlib import Path
from typing import Any

import asyncpg
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.core.settings import Secret
from creditwallet.server import app, db, migrate
from creditwallet.server.clock import ManualClock
from creditwallet.server.config import ServerConfig, Token

TOKENS = {
    "agent": "agent-token-" + "a" * 24,
    "billing": "billing-token-" + "b" * 24,
    "admin": "admin-token-" + "c" * 24,
}
TEMPLATE = "cw_template"
_databases = itertools.count(1)


def config_tokens() -> tuple[Token, ...]:
    return tuple(Token(scope, scope, Secret(token)) for scope, token in TOKENS.items())


def config(data_dir: Path) -> ServerConfig:
    return ServerConfig(
        database_url=None,
        grpc_address="127.0.0.1:0",
        tokens=config_tokens(),
        data_dir=data_dir,
    )


async def migrated_database(superuser_dsn: str, name: str) -> tuple[str, str]:
    """A new database owned by the owner role, migrated by it: (owner DSN, runtime DSN)."""
    conn = await asyncpg.connect(superuser_dsn)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name}")
    finally:
        await conn.close()
    owner, runtime = await db.provision(superuser_dsn, name)
    conn = await asyncpg.connect(owner)
    try:
        await migrate.migrate(conn)
    finally:
        await conn.close()
    return owner, runtime


async def prepare_template(base_dsn: str) -> None:
    await migrated_database(base_dsn, TEMPLATE)


async def fresh_database(base_dsn: str) -> str:
    """A copy of the migrated template; the DSN of the runtime role (what servers use)."""
    name = f"cw_test_{next(_databases)}"
    conn = await asyncpg.connect(base_dsn)
    try:
        await conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE} OWNER {db.OWNER_ROLE}")
    finally:
        await conn.close()
    return db.dsn_with(dsn_for(base_dsn, name), user=db.RUNTIME_LOGIN)


def dsn_for(base_dsn: str, database: str) -> str:
    # embedded DSNs look like postgresql://postgres:@/postgres?host=/socket/dir
    head, _, query = base_dsn.partition("?")
    prefix = head.rsplit("/", 1)[0]
    return f"{prefix}/{database}?{query}" if query else f"{prefix}/{database}"


def real_now() -> dt.datetime:
    """Start the manual clock near real time, so the seed's NOW()-based query sees our rows."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


@dataclasses.dataclass
class Ledger:
    """A running server on a fresh database, and what tests need to talk to it."""

    dsn: str
    running: app.RunningServer
    clock: ManualClock
    clients: list[AsyncCreditWalletClient] = dataclasses.field(default_factory=list)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    @property
    def pool(self) -> db.Pool:
        return self.running.runtime.pool

    def client(self, scope: str = "admin", **options: Any) -> AsyncCreditWalletClient:
        options.setdefault("retries", 0)
        client = AsyncCreditWalletClient(self.target, TOKENS[scope], **options)
        self.clients.append(client)
        return client

    async def close(self) -> None:
        for client in self.clients:
            await client.close()
        await self.running.stop(grace_seconds=1.0)


async def start_ledger(base_dsn: str, data_dir: Path) -> Ledger:
    dsn = await fresh_database(base_dsn)
    clock = ManualClock(real_now())
    running = await app.start(config(data_dir), dsn=dsn, clock=clock, address="127.0.0.1:0")
    return Ledger(dsn, running, clock)


def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:12]}"


async def cli(ledger: Ledger, *args: str) -> int:
    """Run the ``creditwallet`` CLI against the ledger, as an operator would.

    The CLI's sync client blocks and the server runs in this event loop: hence the thread.
    """
    from creditwallet.client.cli import main

    argv = ["--target", ledger.target, "--token", TOKENS["admin"], *args]
    return await asyncio.to_thread(main, argv)


# How long a forced interleaving may take to set up before the test gives up.
LOCK_WAIT_SECONDS = 20.0


async def waiting_on_locks(conn: asyncpg.Connection[asyncpg.Record], count: int) -> None:
    """Until ``count`` backends of this database wait on a lock (the race is set up).

    ``conn`` is often the blocker itself, inside its transaction, where pg_stat_activity is
    read once and then served from a snapshot for the rest of the transaction: a first look
    taken before the waiters arrived would be all it ever saw. The snapshot is cleared
    before every look.
    """
    async with asyncio.timeout(LOCK_WAIT_SECONDS):
        while True:
            waiting = await conn.fetchval(
                "SELECT count(*) FROM (SELECT pg_stat_clear_snapshot()) s, pg_stat_activity a"
                " WHERE a.datname = current_database() AND a.wait_event_type = 'Lock'"
            )
            if waiting >= count:
                return
            await asyncio.sleep(0.005)
