"""``creditwallet-gateway`` (or ``python -m creditwallet.gateway``): the Stripe/cron gateway."""

from __future__ import annotations

import asyncio
import logging
import sys

from creditwallet.core import commands
from creditwallet.core.settings import ConfigError
from creditwallet.gateway.app import create_app
from creditwallet.gateway.config import GatewayConfig
from creditwallet.gateway.serving import serve_until_stopped

ENVIRONMENT = """environment:
  BILLING_TOKEN           the ledger's billing-scope token (required)
  STRIPE_WEBHOOK_SECRET   signing secret(s), comma-separated during a rotation (required)
  CRON_SECRET             bearer secret of POST /rollover (required)
  LEDGER_TARGET           where the gRPC server is (default GRPC_ADDRESS, 127.0.0.1:50051)
  LEDGER_TLS_CA_PATH, LEDGER_TLS_CERT_PATH, LEDGER_TLS_KEY_PATH   TLS to the ledger (CA to
                          trust; client certificate and key for mutual TLS); LEDGER_TLS=on
                          for TLS with the system's roots
  STRIPE_MODE             live|test: which events to believe (default: STRIPE_SECRET_KEY's)
  GATEWAY_ADDRESS         listen address (default 127.0.0.1:8080)
  STRIPE_SECRET_KEY, STRIPE_API_BASE, CATALOG_PATH
  see README.md for the rest"""


def main(argv: list[str] | None = None) -> int:
    commands.parser(
        "creditwallet-gateway", "The credit-wallet Stripe webhook and cron gateway.", ENVIRONMENT
    ).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        config = GatewayConfig.from_env()
    except ConfigError as exc:
        print(f"creditwallet-gateway: {exc}", file=sys.stderr)
        return 2
    logging.getLogger("creditwallet.gateway").info("gateway config: %r", config)
    asyncio.run(serve_until_stopped(create_app(config), config.host, config.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
