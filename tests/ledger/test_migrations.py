"""Migrations: applied once each, under an advisory lock, even by replicas starting together."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from creditwallet.server import migrate

from tests import harness


async def test_concurrent_starts_apply_each_migration_once(base_dsn: str) -> None:
    admin = await asyncpg.connect(base_dsn)
    try:
        await admin.execute("DROP DATABASE IF EXISTS cw_migrations")
        await admin.execute("CREATE DATABASE cw_migrations")
    finally:
        await admin.close()
    dsn = harness.dsn_for(base_dsn, "cw_migrations")
    conns = [await asyncpg.connect(dsn) for _ in range(4)]
    try:
        applied = await asyncio.gather(*(migrate.migrate(c) for c in conns))
        names = [name for run in applied for name in run]
        assert sorted(names) == sorted(n for _, n, _ in migrate.load_migrations())
        rows = await conns[0].fetchval("SELECT count(*) FROM schema_migrations")
        assert rows == len(migrate.load_migrations())
        assert await migrate.migrate(conns[0]) == []
        await conns[0].execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1")
        with pytest.raises(migrate.MigrationError):
            await migrate.migrate(conns[0])
    finally:
        for c in conns:
            await c.close()
