"""The gateway's configuration: read once from the environment into one frozen object.

Secrets are ``Secret`` (masked repr), so printing the config never leaks them. A missing,
malformed or weakening value (a short token, a half-configured TLS, a Stripe mode that
contradicts the key) stops start-up with a message naming the variable.

The ledger connection: plaintext by default (a ledger on the same host); TLS when
``LEDGER_TLS_CA_PATH`` (the CA to trust) or ``LEDGER_TLS=on`` (the system's roots) is set;
mutual TLS when ``LEDGER_TLS_CERT_PATH`` and ``LEDGER_TLS_KEY_PATH`` are set too.

The Stripe mode (which events are believed about money): ``livemode`` is that of the secret
key (``sk_live_``/``rk_live_`` or ``sk_test_``/``rk_test_``); without a key, ``STRIPE_MODE``
(live|test) must say it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from creditwallet.core import limits
from creditwallet.core.logs import LogSettings
from creditwallet.core.settings import ConfigError, Secret, ledger_tls
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
    livemode: bool = False
    body_timeout_seconds: float = limits.GATEWAY_BODY_TIMEOUT_SECONDS
    ledger_tls: bool = False
    ledger_tls_ca_path: Path | None = None
    ledger_tls_cert_path: Path | None = None
    ledger_tls_key_path: Path | None = None
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
        token = required("BILLING_TOKEN")
        if len(token) < limits.TOKEN_LENGTH_MIN:
            raise ConfigError(
                f"BILLING_TOKEN: a token must be at least {limits.TOKEN_LENGTH_MIN} characters"
            )
        cron = required("CRON_SECRET")
        if len(cron) < limits.TOKEN_LENGTH_MIN or cron == token:
            raise ConfigError(
                f"CRON_SECRET must be at least {limits.TOKEN_LENGTH_MIN} characters, and not"
                " the billing token"
            )
        tls = ledger_tls(env)
        return cls(
            host=host,
            port=port,
            ledger_target=env.get("LEDGER_TARGET") or env.get("GRPC_ADDRESS") or "127.0.0.1:50051",
            billing_token=Secret(token),
            webhook_secrets=secrets,
            cron_secret=Secret(cron),
            stripe_secret_key=Secret(key) if key else None,
            stripe_api_base=env.get("STRIPE_API_BASE") or None,
            catalog_path=Path(env.get("CATALOG_PATH") or DEFAULT_CATALOG_PATH),
            livemode=_livemode(key, env.get("STRIPE_MODE", "").strip().lower()),
            ledger_tls=tls[0],
            ledger_tls_ca_path=tls[1],
            ledger_tls_cert_path=tls[2],
            ledger_tls_key_path=tls[3],
            log=LogSettings.from_env(env),
        )


_KEY_MODES = {"sk_live_": True, "rk_live_": True, "sk_test_": False, "rk_test_": False}


def _livemode(key: str, mode: str) -> bool:
    if mode not in ("", "live", "test"):
        raise ConfigError("STRIPE_MODE must be live or test")
    from_key = next((live for prefix, live in _KEY_MODES.items() if key.startswith(prefix)), None)
    if key and from_key is None:
        raise ConfigError(
            "STRIPE_SECRET_KEY must start with sk_live_, sk_test_, rk_live_ or rk_test_"
        )
    if from_key is not None:
        if mode and (mode == "live") != from_key:
            raise ConfigError("STRIPE_MODE contradicts the mode of STRIPE_SECRET_KEY")
        return from_key
    if not mode:
        raise ConfigError("STRIPE_MODE (live or test) is required without STRIPE_SECRET_KEY")
    return mode == "live"
