"""``creditwallet-gateway`` (or ``python -m creditwallet.gateway``): the Stripe/cron gateway.

Configured from the environment (``--help`` lists the variables). Any reason it cannot start
(a missing secret, a catalog that is not there, a port in use) is one line on stderr naming
the variable to fix: exit 2 for a malformed setting, 1 for one that cannot work here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys

from creditwallet.core import commands, logs, startup
from creditwallet.core.settings import ConfigError, StartupError

log = logging.getLogger("creditwallet.gateway")

PROG = "creditwallet-gateway"
ENVIRONMENT = """environment (defaults in brackets):
  BILLING_TOKEN           the ledger's billing-scope token (required)
  STRIPE_WEBHOOK_SECRET   signing secret(s), comma-separated during a rotation (required)
  CRON_SECRET             bearer secret of POST /rollover (required)
  LEDGER_TARGET           where the gRPC server is [GRPC_ADDRESS, else 127.0.0.1:50051]
  GATEWAY_ADDRESS         listen address [127.0.0.1:8080]
  STRIPE_SECRET_KEY       restricted key to read prices and line items [unset: catalog only]
  STRIPE_API_BASE         Stripe's API base URL [Stripe's]
  CATALOG_PATH            price catalog, the allow-list (price id -> kind, credits,
                          unit_amount, currency) [the built-in one]
  STRIPE_MODE             live|test: which checkouts to believe [STRIPE_SECRET_KEY's]
  LEDGER_TLS_CA_PATH, LEDGER_TLS_CERT_PATH, LEDGER_TLS_KEY_PATH   TLS to the ledger: the CA
                          to trust, a client certificate and key for mutual TLS [plaintext];
                          LEDGER_TLS=on for the system's roots
  LOG_FORMAT, LOG_LEVEL   json|text [json], DEBUG|INFO|WARNING|ERROR [INFO]
The README's Configuration section describes each."""


def main(argv: list[str] | None = None) -> int:
    commands.parser(
        PROG, "The credit-wallet Stripe webhook and cron gateway.", ENVIRONMENT
    ).parse_args(argv)
    return startup.run_command(PROG, _main)


def _main() -> int:
    try:
        from creditwallet.gateway import catalog
        from creditwallet.gateway.app import create_app
        from creditwallet.gateway.config import GatewayConfig
        from creditwallet.gateway.serving import serve_until_stopped
    except ImportError as exc:  # a plain install is the client and the CLI only
        print(f"{PROG}: {exc.name} is missing: install creditwallet[gateway]", file=sys.stderr)
        return startup.EXIT_CONFIG
    config = GatewayConfig.from_env()
    logs.configure(config.log)
    try:
        prices = catalog.load(config.catalog_path)
    except OSError as error:
        raise StartupError(
            f"CATALOG_PATH={config.catalog_path}: cannot be read ({error.strerror}): point it "
            "at a price catalog, or unset it for the built-in one"
        ) from None
    except (ValueError, KeyError, TypeError, AttributeError, json.JSONDecodeError) as error:
        raise ConfigError(
            f"CATALOG_PATH={config.catalog_path} is not a price catalog "
            f'({startup.one_line(error)}): it needs {{"prices": {{PRICE_ID: {{"kind": '
            '"top_up"|"subscription", "credits": "100", "unit_amount": 499, "currency": '
            '"usd"}}}}'
        ) from None
    logs.log_config(log, "gateway", config)
    log.info("price catalog loaded", extra={"prices": len(prices)})
    address = f"{config.host}:{config.port}"
    startup.check_can_listen("GATEWAY_ADDRESS", address)
    try:
        asyncio.run(serve_until_stopped(create_app(config), config.host, config.port))
    except OSError as error:  # the port was taken between the check and the bind
        raise StartupError(startup.listen_failure("GATEWAY_ADDRESS", address, error)) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
