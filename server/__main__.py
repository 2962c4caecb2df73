"""``creditwallet-server`` (or ``python -m creditwallet.server``): the gRPC server.

Configured from the environment (``--help`` lists the variables); with no ``DATABASE_URL`` it
starts the embedded PostgreSQL (extra ``[embedded]``) with its data under ``DATA_DIR``. It
waits for the database (bounded, logged), and any reason it cannot start is one line on
stderr naming the variable to fix: exit 2 for a malformed setting, 1 for one that cannot
work here (a port in use, a database that never answers).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable
from pathlib import Path
from typing import TYPE_CHECKING

from creditwallet.core import commands, logs, startup
from creditwallet.core.logs import LogSettings
from creditwallet.core.settings import ConfigError, StartupError

if TYPE_CHECKING:
    from creditwallet.server.config import ServerConfig

log = logging.getLogger("creditwallet.server")

PROG = "creditwallet-server"
ENVIRONMENT = """environment (defaults in brackets):
  AGENT_TOKENS, BILLING_TOKENS, ADMIN_TOKENS   label:token,... per scope, or AGENT_TOKEN,
                      ... for one token (required; each 32+ characters, none in two scopes)
  DATABASE_URL        PostgreSQL DSN of the runtime role; creditwallet-migrate up must have
                      run [the embedded PostgreSQL under DATA_DIR, as its runtime role]
  DATA_DIR            where the embedded PostgreSQL keeps its data [.data]
  GRPC_ADDRESS        listen address [127.0.0.1:50051]
  METRICS_ADDRESS     host:port of the Prometheus endpoint [off]
  TLS_CERT_PATH, TLS_KEY_PATH, TLS_CLIENT_CA_PATH   TLS, and mutual TLS with a client CA
  TRIAL_CREDITS_MICROS  trial lot of a new account [5000000]
  DEBIT_BATCHING      group commit of concurrent debits, on|off [on]
  GRPC_WORKERS        server processes sharing GRPC_ADDRESS [one per core]
  DB_STATEMENT_CACHE_SIZE   asyncpg's prepared statements, 0 behind old PgBouncer [100]
  LOG_FORMAT, LOG_LEVEL   json|text [json], DEBUG|INFO|WARNING|ERROR [INFO]
The README's Configuration section describes each."""


def main(argv: list[str] | None = None) -> int:
    commands.parser(PROG, "The credit-wallet gRPC server.", ENVIRONMENT).parse_args(argv)
    return startup.run_command(PROG, _main)


def _main() -> int:
    try:
        import uvloop
        from creditwallet.server import app  # noqa: F401 - fails early without [server]
        from creditwallet.server.config import ServerConfig
    except ImportError as exc:  # a plain install is the client and the CLI only
        print(f"{PROG}: {exc.name} is missing: install creditwallet[server]", file=sys.stderr)
        return startup.EXIT_CONFIG
    config = ServerConfig.from_env()
    logs.configure(LogSettings("json" if config.log_json else "text", config.log_level))
    logs.log_config(log, "server", config)
    startup.check_can_listen("GRPC_ADDRESS", config.grpc_address)
    if config.metrics_address:
        startup.check_can_listen("METRICS_ADDRESS", config.metrics_address)
    for variable, path in (
        ("TLS_CERT_PATH", config.tls_cert_path),
        ("TLS_KEY_PATH", config.tls_key_path),
        ("TLS_CLIENT_CA_PATH", config.tls_client_ca_path),
    ):
        _check_readable(variable, path)
    uvloop.install()
    return asyncio.run(_serve(config))


def _check_readable(variable: str, path: Path | None) -> None:
    if path is None:
        return
    try:
        path.read_bytes()
    except OSError as error:
        raise StartupError(
            f"{variable}={path}: cannot be read ({error.strerror}): point it at a PEM file"
        ) from None


async def _serve(config: ServerConfig) -> int:
    from creditwallet.server import app, db, migrate
    from creditwallet.server.startup import start_embedded, wait_for_database

    if config.database_url:
        dsn = config.database_url
    else:  # the embedded cluster, as its runtime role (its owner role migrates it)
        _, dsn = await db.provision(start_embedded(config.data_dir), db.EMBEDDED_DATABASE)
    await wait_for_database(dsn)
    if config.grpc_workers > 1:
        from creditwallet.server import workers

        return await _supervise(workers.supervise(config, dsn))
    try:
        running = await app.start(config, dsn=dsn)
    except ConfigError:
        raise  # the database role: one line naming DATABASE_URL
    except migrate.MigrationError as error:
        raise StartupError(f"the database's schema does not match this version: {error}") from None
    except RuntimeError as error:  # grpc's "Failed to bind to address ..."
        if "bind" not in str(error):
            raise
        raise StartupError(
            f"GRPC_ADDRESS={config.grpc_address}: cannot listen there (the port was taken "
            "meanwhile, or the host is not this machine's): set GRPC_ADDRESS to a free host:port"
        ) from None
    except OSError as error:
        if config.metrics_address and error.errno in startup.BIND_ERRNOS:
            failure = startup.listen_failure("METRICS_ADDRESS", config.metrics_address, error)
            raise StartupError(failure) from None
        log.debug("start-up failed", exc_info=True)
        raise StartupError(f"start-up failed: {startup.one_line(error)}") from None
    except Exception as error:  # one line; LOG_LEVEL=DEBUG logs the traceback
        log.debug("start-up failed", exc_info=True)
        raise StartupError(f"start-up failed: {startup.one_line(error)}") from None
    log.info("gRPC server listening", extra={"address": config.grpc_address, "port": running.port})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await running.stop()
    return 0


async def _supervise(work: Awaitable[int]) -> int:
    from creditwallet.server import migrate

    try:
        return await work
    except migrate.MigrationError as error:
        raise StartupError(
            f"the database's schema does not match this version ({error}): restore the "
            "migration files of the version that created it"
        ) from None


if __name__ == "__main__":
    sys.exit(main())
