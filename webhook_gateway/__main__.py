"""``creditwallet-gateway`` (or ``python -m creditwallet.gateway``): the Stripe/cron gateway."""

from __future__ import annotations

import logging
import sys

from aiohttp import web
from creditwallet.core import commands
from creditwallet.core.settings import ConfigError
from creditwallet.gateway.app import create_app
from creditwallet.gateway.config import GatewayConfig

ENVIRONMENT = """environment:
  BILLING_TOKEN           the ledger's billing-scope token (required)
  STRIPE_WEBHOOK_SECRET   signing secret(s), comma-separated during a rotation (required)
  CRON_SECRET             bearer secret of POST /rollover (required)
  LEDGER_TARGET           where the gRPC server is (default GRPC_ADDRESS, 127.0.0.1:50051)
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
    web.run_app(create_app(config), host=config.host, port=config.port, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
