"""``python -m server``: the gRPC server, configured from the environment (SPEC §2)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from server import app, db, logs
from server.config import ConfigError, ServerConfig

log = logging.getLogger("server")


async def main() -> int:
    try:
        config = ServerConfig.from_env()
    except ConfigError as exc:
        print(f"credit-wallet server: {exc}", file=sys.stderr)
        return 2
    logs.configure(config.log_json, logging.getLevelNamesMapping()[config.log_level])
    dsn = config.database_url or db.start_embedded(config.data_dir)
    running = await app.start(config, dsn=dsn)
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
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency; tolerate its absence
        pass
    sys.exit(asyncio.run(main()))
