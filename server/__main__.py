"""``creditwallet-server`` (or ``python -m creditwallet.server``): the gRPC server.

Configured from the environment (``--help`` lists the variables); with no ``DATABASE_URL`` it
starts the embedded PostgreSQL (extra ``[embedded]``) with its data under ``DATA_DIR``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from creditwallet.core import commands, logs
from creditwallet.core.settings import ConfigError
from creditwallet.server.config import ServerConfig

log = logging.getLogger("creditwallet.server")

ENVIRONMENT = """environment:
  AGENT_TOKENS, BILLING_TOKENS, ADMIN_TOKENS   label:token,... per scope (or AGENT_TOKEN,
                      ... for one token); each at least 32 characters, none in two scopes
  DATABASE_URL        PostgreSQL DSN of the runtime role (default: the embedded PostgreSQL
                      under DATA_DIR); creditwallet-migrate up must have run
  DATA_DIR            where the embedded PostgreSQL keeps its data (default .data)
  GRPC_ADDRESS        listen address (default 127.0.0.1:50051)
  TLS_CERT_PATH, TLS_KEY_PATH, TLS_CLIENT_CA_PATH   TLS, and mutual TLS with a client CA
  METRICS_ADDRESS     host:port of the Prometheus endpoint (default: off)
  LOG_FORMAT, LOG_LEVEL   json|text, DEBUG|INFO|WARNING|ERROR
  see README.md for the rest"""


def main(argv: list[str] | None = None) -> int:
    commands.parser(
        "creditwallet-server", "The credit-wallet gRPC server.", ENVIRONMENT
    ).parse_args(argv)
    try:
        import uvloop
        from creditwallet.server import app  # noqa: F401 - fails early without [server]
    except ImportError as exc:  # a plain install is the client and the CLI only
        print(
            f"creditwallet-server: {exc.name} is missing: install creditwallet[server]",
            file=sys.stderr,
        )
        return 2
    try:
        config = ServerConfig.from_env()
    except ConfigError as exc:
        print(f"creditwallet-server: {exc}", file=sys.stderr)
        return 2
    uvloop.install()
    return asyncio.run(_serve(config))


async def _serve(config: ServerConfig) -> int:
    from creditwallet.server import app, db, migrate

    logs.configure(config.log_json, logging.getLevelNamesMapping()[config.log_level])
    if config.database_url:
        dsn = config.database_url
    else:
        _, dsn = await db.embedded_dsns(config.data_dir)
    try:
        running = await app.start(config, dsn=dsn)
    except (ConfigError, migrate.MigrationError) as exc:
        print(f"creditwallet-server: {exc}", file=sys.stderr)
        return 2
    log.info("gRPC server listening", extra={"address": config.grpc_address, "port": running.port})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await running.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
