"""``python -m webhook_gateway``: the gateway, configured from the environment."""

from __future__ import annotations

import logging
import sys

from aiohttp import web

from server.config import ConfigError
from webhook_gateway.app import create_app
from webhook_gateway.config import GatewayConfig


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        config = GatewayConfig.from_env()
    except ConfigError as exc:
        sys.exit(f"webhook_gateway: {exc}")
    logging.getLogger(__name__).info("gateway config: %r", config)
    web.run_app(create_app(config), host=config.host, port=config.port, print=None)


if __name__ == "__main__":
    main()
