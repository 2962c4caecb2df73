"""The server's configuration: read once from the environment into one frozen object.

Secrets are wrapped in ``Secret`` so that a log line or a traceback that prints the
config shows ``Secret('****')`` instead of a token.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

from creditwallet.core.logs import LogSettings
from creditwallet.core.settings import ConfigError, Secret
from creditwallet.server.events.settings import EventsConfig


def _is_host_port(value: str) -> bool:
    host, _, port = value.rpartition(":")
    return bool(host) and port.isdigit() and int(port) <= 65535


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    database_url: str | None
    grpc_address: str
    agent_token: Secret
    billing_token: Secret
    admin_token: Secret
    data_dir: Path
    tls_cert_path: Path | None = None
    tls_key_path: Path | None = None
    tls_client_ca_path: Path | None = None
    trial_credits_micros: int = 5_000_000
    log_json: bool = True
    # host:port of the Prometheus endpoint; None (METRICS_ADDRESS unset) serves no metrics.
    metrics_address: str | None = None
    log_level: str = "INFO"
    debit_batching: bool = True
    # asyncpg's prepared-statement cache; 0 behind PgBouncer < 1.21 in transaction mode.
    statement_cache_size: int = 100
    # Balance alerts, expiry notices, webhooks, auto-recharge (server/events/settings.py).
    events: EventsConfig = dataclasses.field(default_factory=EventsConfig)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServerConfig:
        env = os.environ if env is None else env

        def required(name: str) -> Secret:
            value = env.get(name, "")
            if not value:
                raise ConfigError(
                    f"{name} is not set: give it a long random bearer token "
                    "(make run generates one per scope)"
                )
            return Secret(value)

        def optional_path(name: str) -> Path | None:
            value = env.get(name, "")
            return Path(value) if value else None

        log = LogSettings.from_env(env)
        trial = env.get("TRIAL_CREDITS_MICROS", "5000000")
        if not trial.isdigit():
            raise ConfigError("TRIAL_CREDITS_MICROS must be a non-negative integer")
        cfg = cls(
            database_url=env.get("DATABASE_URL") or None,
            grpc_address=env.get("GRPC_ADDRESS", "127.0.0.1:50051"),
            agent_token=required("AGENT_TOKEN"),
            billing_token=required("BILLING_TOKEN"),
            admin_token=required("ADMIN_TOKEN"),
            data_dir=Path(env.get("DATA_DIR", ".data")),
            tls_cert_path=optional_path("TLS_CERT_PATH"),
            tls_key_path=optional_path("TLS_KEY_PATH"),
            tls_client_ca_path=optional_path("TLS_CLIENT_CA_PATH"),
            trial_credits_micros=int(trial),
            log_json=log.format == "json",
            metrics_address=env.get("METRICS_ADDRESS") or None,
            log_level=log.level,
            debit_batching=env.get("DEBIT_BATCHING", "on") != "off",
            statement_cache_size=_non_negative(env, "DB_STATEMENT_CACHE_SIZE", 100),
            events=EventsConfig.from_env(env),
        )
        if not _is_host_port(cfg.grpc_address):
            raise ConfigError(
                f"GRPC_ADDRESS must be host:port (e.g. 127.0.0.1:50051), not {cfg.grpc_address!r}"
            )
        if cfg.metrics_address is not None and not _is_host_port(cfg.metrics_address):
            raise ConfigError("METRICS_ADDRESS must be host:port")
        if (cfg.tls_cert_path is None) != (cfg.tls_key_path is None):
            raise ConfigError("TLS_CERT_PATH and TLS_KEY_PATH must be set together")
        return cfg


def _non_negative(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name, str(default))
    if not value.isascii() or not value.isdigit():
        raise ConfigError(f"{name} must be a non-negative integer")
    return int(value)
