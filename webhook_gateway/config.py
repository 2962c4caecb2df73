"""The gateway's configuration: read once from the environment into one frozen object.

Secrets are ``creditwallet.core.settings.Secret`` (masked repr), so printing the config never
leaks them. A missing required value stops start-up with a message naming it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from creditwallet.core import limits
from creditwallet.core.logs import LogSettings
from creditwallet.core.settings import ConfigError, Secret
from creditwallet.core.startup import split_host_port

DEFAULT_CATALOG_PATH: Final = Path(__file__).with_name("catalog.json")
# What each required variable is, for the one-line error when it is missing.
_REQUIRED: Final = {
    "STRIPE_WEBHOOK_SECRET": "set it to the endpoint's signing secret (whsec_...)",
    "BILLING_TOKEN": "set it to the ledger's billing-scope token",
    "CRON_SECRET": "set it to the bearer secret POST /rollover must present",
}


@dataclasses.dataclass(frozen=True)
class GatewayConfig:
    host: str
    port: int
    ledger_target: str
    billing_token: Secret
    webhook_secrets: tuple[Secret, ...]
    cron_secret: Secret
    stripe_secret_key: Secret | None = None
    stripe_api_base: str | None = None
    catalog_path: Path = DEFAULT_CATALOG_PATH
    rpc_timeout_seconds: float = limits.GATEWAY_RPC_TIMEOUT_SECONDS
    stripe_timeout_seconds: float = limits.GATEWAY_STRIPE_TIMEOUT_SECONDS
    rollover_timeout_seconds: float = limits.GATEWAY_ROLLOVER_TIMEOUT_SECONDS
    log: LogSettings = dataclasses.field(default_factory=LogSettings)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GatewayConfig:
        env = os.environ if env is None else env

        def required(name: str) -> str:
            value = env.get(name, "").strip()
            if not value:
                raise ConfigError(f"{name} is not set: {_REQUIRED[name]}")
            return value

        host, port = split_host_port(
            "GATEWAY_ADDRESS", env.get("GATEWAY_ADDRESS", "127.0.0.1:8080")
        )
        secrets = tuple(
            Secret(s.strip()) for s in required("STRIPE_WEBHOOK_SECRET").split(",") if s.strip()
        )
        key = env.get("STRIPE_SECRET_KEY", "").strip()
        return cls(
            host=host,
            port=port,
            ledger_target=env.get("LEDGER_TARGET") or env.get("GRPC_ADDRESS") or "127.0.0.1:50051",
            billing_token=Secret(required("BILLING_TOKEN")),
            webhook_secrets=secrets,
            cron_secret=Secret(required("CRON_SECRET")),
            stripe_secret_key=Secret(key) if key else None,
            stripe_api_base=env.get("STRIPE_API_BASE") or None,
            catalog_path=Path(env.get("CATALOG_PATH") or DEFAULT_CATALOG_PATH),
            log=LogSettings.from_env(env),
        )
