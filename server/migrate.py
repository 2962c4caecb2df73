"""Plain numbered SQL migrations, applied once each, in order of their numbers, under an
advisory lock.

Several replicas may start at once: a transaction-level advisory lock around each file makes
them apply each file exactly once. An applied file whose checksum changed is refused rather
than ignored, since the database no longer matches the code that describes it.

Migrations run as the schema's owner role (``MIGRATIONS_DATABASE_URL``), never as the
server's. Every run ends by (re)applying the runtime role's grants (``RUNTIME_GRANTS``), so a
table added by any later migration is covered, and ``credit_transactions`` stays append-only
for the server whatever a migration did.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import sys
from importlib import resources
from pathlib import Path

import asyncpg
from creditwallet.core import commands, limits
from creditwallet.core.settings import ConfigError, StartupError
from creditwallet.core.startup import run_command

log = logging.getLogger(__name__)

MIGRATIONS_LOCK_KEY = 0x63726564_6974  # "credit" — arbitrary, stable

_LOCK = "SELECT pg_advisory_xact_lock($1)"

_CREATE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


# The server's privileges: read and write the ledger's tables, append to the history, read
# which migrations are applied; nothing else (no DDL: it owns nothing). The group role is
# created here when missing, which needs CREATEROLE; create it beforehand to avoid that.
RUNTIME_GRANTS = """
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'creditwallet_runtime') THEN
        CREATE ROLE creditwallet_runtime NOLOGIN;
    END IF;
END $$;
GRANT USAGE ON SCHEMA public TO creditwallet_runtime;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO creditwallet_runtime;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO creditwallet_runtime;
REVOKE UPDATE, DELETE, TRUNCATE ON credit_transactions FROM creditwallet_runtime;
REVOKE UPDATE, DELETE, TRUNCATE ON member_changes FROM creditwallet_runtime;
REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON schema_migrations FROM creditwallet_runtime;
"""


class MigrationError(Exception):
    """An applied migration was edited, the files are misnumbered, or some are pending."""


def load_migrations() -> list[tuple[int, str, str]]:
    folder = resources.files("creditwallet.server") / "migrations"
    found = []
    for entry in folder.iterdir():
        name = entry.name
        if not name.endswith(".sql"):
            continue
        version = int(name.split("_", 1)[0])
        found.append((version, name, entry.read_text(encoding="utf-8")))
    found.sort()
    versions = [v for v, _, _ in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migrations share a number: {versions}")
    return found


async def migrate(conn: asyncpg.Connection[asyncpg.Record]) -> list[str]:
    """Apply pending migrations; return the names applied by this call.

    Each file is applied in a transaction of its own that first takes a transaction-level
    advisory lock and then checks again that no one applied it meanwhile. A transaction-level
    lock (unlike a session lock) needs nothing but the transaction, so this also works through
    PgBouncer in transaction mode, where consecutive statements outside a transaction may run
    on different server connections.
    """
    applied_now: list[str] = []
    async with conn.transaction():
        await conn.execute(_LOCK, MIGRATIONS_LOCK_KEY)
        await conn.execute(_CREATE)
        applied = await _applied(conn)
    pending = []
    for version, name, sql in load_migrations():
        checksum = hashlib.sha256(sql.encode()).hexdigest()
        if version not in applied:
            pending.append((version, name, sql, checksum))
        elif applied[version] != checksum:
            raise MigrationError(f"applied migration {name} was edited")
    for version, name, sql, checksum in pending:
        async with conn.transaction():
            await conn.execute(_LOCK, MIGRATIONS_LOCK_KEY)
            if version in await _applied(conn):
                continue  # another run applied it while this one waited for the lock
            await conn.execute(sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                version,
                name,
                checksum,
            )
        log.info("migration applied", extra={"migration": name})
        applied_now.append(name)
    async with conn.transaction():
        await conn.execute(_LOCK, MIGRATIONS_LOCK_KEY)
        await conn.execute(RUNTIME_GRANTS)
    return applied_now


async def _applied(conn: asyncpg.Connection[asyncpg.Record]) -> dict[int, str]:
    rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
    return {r["version"]: r["checksum"] for r in rows}


async def status(conn: asyncpg.Connection[asyncpg.Record]) -> list[tuple[str, str]]:
    """Every known migration and whether it is applied, pending, or edited after applying."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    rows = await conn.fetch("SELECT version, checksum FROM schema_migrations") if exists else []
    applied = {r["version"]: r["checksum"] for r in rows}
    report = []
    for version, name, sql in load_migrations():
        checksum = hashlib.sha256(sql.encode()).hexdigest()
        if version not in applied:
            report.append((name, "pending"))
        else:
            report.append((name, "applied" if applied[version] == checksum else "EDITED"))
    return report


async def require_current(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """Refuse a database whose schema is not exactly the code's (the server's start-up)."""
    behind = [f"{name} ({state})" for name, state in await status(conn) if state != "applied"]
    if behind:
        raise MigrationError(
            "the schema is not the code's: run creditwallet-migrate up as the owner role"
            f" ({', '.join(behind)})"
        )


ENVIRONMENT = """environment:
  MIGRATIONS_DATABASE_URL   PostgreSQL DSN of the schema's owner role (default DATABASE_URL,
                            else the embedded PostgreSQL under DATA_DIR, as its owner role)
  DATA_DIR                  where the embedded PostgreSQL keeps its data (default .data)
  DB_STATEMENT_CACHE_SIZE   asyncpg's prepared statements, 0 behind PgBouncer < 1.21 (100)"""


def main(argv: list[str] | None = None) -> int:
    """``creditwallet-migrate up|status``."""
    parser = commands.parser(
        "creditwallet-migrate", "Apply or list the ledger's schema migrations.", ENVIRONMENT
    )
    parser.add_argument("action", choices=("up", "status"), help="apply pending, or list all")
    args = parser.parse_args(argv)
    return run_command("creditwallet-migrate", lambda: asyncio.run(_main(args.action)))


async def _main(action: str) -> int:
    from creditwallet.server import db
    from creditwallet.server.startup import start_embedded, wait_for_database

    dsn = os.environ.get("MIGRATIONS_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if not dsn:  # the embedded cluster, as its owner role
        superuser = start_embedded(Path(os.environ.get("DATA_DIR") or ".data"))
        dsn, _ = await db.provision(superuser, db.EMBEDDED_DATABASE)
    await wait_for_database(dsn)
    cache = os.environ.get("DB_STATEMENT_CACHE_SIZE", "100")
    if not cache.isascii() or not cache.isdigit():
        raise ConfigError("DB_STATEMENT_CACHE_SIZE must be a non-negative integer")
    conn = await asyncpg.connect(
        dsn, timeout=limits.DB_CONNECT_TIMEOUT_SECONDS, statement_cache_size=int(cache)
    )
    try:
        if action == "up":
            try:
                applied = await migrate(conn)
            except MigrationError as error:
                raise StartupError(
                    f"the database's schema does not match this version: {error}"
                ) from None
            for name in applied:
                print(f"applied {name}")
            print("up to date")
            return 0
        report = await status(conn)
    finally:
        await conn.close()
    for name, state in report:
        print(f"{state:8} {name}")
    return 1 if any(state != "applied" for _, state in report) else 0


if __name__ == "__main__":
    sys.exit(main())
