"""Plain numbered SQL migrations, applied once each, in order of their numbers, under an
advisory lock.

Several replicas may start at once: the session-level advisory lock makes them apply each
file exactly once. An applied file whose checksum changed is refused rather than ignored,
since the database no longer matches the code that describes it.

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
from creditwallet.core.settings import StartupError
from creditwallet.core.startup import run_command

log = logging.getLogger(__name__)

MIGRATIONS_LOCK_KEY = 0x63726564_6974  # "credit" — arbitrary, stable

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
    """Apply pending migrations; return the names applied by this call."""
    applied_now: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATIONS_LOCK_KEY)
    try:
        await conn.execute(_CREATE)
        rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
        applied = {r["version"]: r["checksum"] for r in rows}
        for version, name, sql in load_migrations():
            checksum = hashlib.sha256(sql.encode()).hexdigest()
            if version in applied:
                if applied[version] != checksum:
                    raise MigrationError(f"applied migration {name} was edited")
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    version,
                    name,
                    checksum,
                )
            log.info("migration applied", extra={"migration": name})
            applied_now.append(name)
        await conn.execute(RUNTIME_GRANTS)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATIONS_LOCK_KEY)
    return applied_now


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
  DATA_DIR                  where the embedded PostgreSQL keeps its data (default .data)"""


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
    conn = await asyncpg.connect(dsn, timeout=limits.DB_CONNECT_TIMEOUT_SECONDS)
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
