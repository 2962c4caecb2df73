"""``creditwallet-console`` (or ``python -m creditwallet.client.console``): the operators'
console in the browser.

Configured from the environment (``--help`` lists the variables). Any reason it cannot start
(a missing token, a port in use) is one line on stderr naming the variable to fix: exit 2 for
a malformed setting, 1 for one that cannot work here.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from creditwallet.core import commands, logs, startup
from creditwallet.core.settings import StartupError

log = logging.getLogger("creditwallet.console")

PROG = "creditwallet-console"
ENVIRONMENT = """environment (defaults in brackets):
  ADMIN_TOKEN             the ledger's admin-scope token; operators sign in with it (required)
  LEDGER_TARGET           where the gRPC server is [GRPC_ADDRESS, else 127.0.0.1:50051]
  CONSOLE_ADDRESS         listen address [127.0.0.1:8090]
  CONSOLE_TLS_CERT_PATH, CONSOLE_TLS_KEY_PATH   serve HTTPS with this certificate and key
                          [plain HTTP]
  CONSOLE_BEHIND_TLS      on when a proxy serves the console over HTTPS [off]
  LEDGER_TLS_CA_PATH, LEDGER_TLS_CERT_PATH, LEDGER_TLS_KEY_PATH, LEDGER_TLS   TLS to the
                          ledger, as for the gateway [plaintext]
  LOG_FORMAT, LOG_LEVEL   json|text [json], DEBUG|INFO|WARNING|ERROR [INFO]
docs/console.md describes the console."""


def main(argv: list[str] | None = None) -> int:
    commands.parser(
        PROG, "The credit-wallet operators' console in the browser.", ENVIRONMENT
    ).parse_args(argv)
    return startup.run_command(PROG, _main)


def _main() -> int:
    try:
        from creditwallet.client.console.app import serving
        from creditwallet.client.console.config import ConsoleConfig
    except ImportError as exc:  # a plain install is the client and the CLI only
        print(f"{PROG}: {exc.name} is missing: install creditwallet[console]", file=sys.stderr)
        return startup.EXIT_CONFIG
    config = ConsoleConfig.from_env()
    logs.configure(config.log)
    logs.log_config(log, "console", config)
    address = f"{config.host}:{config.port}"
    startup.check_can_listen("CONSOLE_ADDRESS", address)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with serving(config) as (_, port):
            scheme = "https" if config.tls_cert_path else "http"
            log.info("console listening", extra={"url": f"{scheme}://{config.host}:{port}/"})
            await stop.wait()

    try:
        asyncio.run(serve())
    except OSError as error:  # the port was taken between the check and the bind
        raise StartupError(startup.listen_failure("CONSOLE_ADDRESS", address, error)) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
