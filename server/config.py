"""The server's configuration: read once from the environment into one frozen object.

Secrets are wrapped in ``Secret`` so that a log line or a traceback that prints the
config shows ``Secret('****')`` instead of a token.

It fails closed: a setting that would weaken the server without saying so (TLS half
configured, a short token, one token for two scopes) stops start-up with a ``ConfigError``
naming the variable, rather than run in a mode nobody chose.

Tokens: each scope has one or more labelled tokens, ``AGENT_TOKENS=runtime-a:<token>,
runtime-b:<token>``, so one caller's token can be rotated or revoked alone; the label, never the
token, is what logs and metrics name. ``AGENT_TOKEN=<token>`` is the shorthand for one token,
labelled with the scope's name (``agent``); setting both forms of a scope is refused.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path

from creditwallet.core import limits
from creditwallet.core.logs import LogSettings
from creditwallet.core.settings import ConfigError, Secret
from creditwallet.server.events.settings import EventsConfig

SCOPES = ("agent", "billing", "admin")
# Per scope: the one-token variable and the labelled-tokens one.
TOKEN_ENV_VARS = {
    "agent": ("AGENT_TOKEN", "AGENT_TOKENS"),
    "billing": ("BILLING_TOKEN", "BILLING_TOKENS"),
    "admin": ("ADMIN_TOKEN", "ADMIN_TOKENS"),
}
_LABEL = re.compile(rf"[a-z0-9][a-z0-9._-]{{0,{limits.TOKEN_LABEL_LENGTH_MAX - 1}}}")


@dataclasses.dataclass(frozen=True)
class Token:
    """One bearer token: the scope it grants and the label logs and metrics name it by."""

    scope: str
    label: str
    secret: Secret

    def __str__(self) -> str:
        return f"{self.label}({self.scope})=****"


def parse_tokens(env: Mapping[str, str]) -> tuple[Token, ...]:
    """Every scope's tokens, checked: long enough, labels unique, no token in two places."""
    found: list[Token] = []
    where: dict[str, str] = {}  # token value -> the variable that set it first
    labels: dict[str, str] = {}
    for scope in SCOPES:
        single, many = TOKEN_ENV_VARS[scope]
        if env.get(single) and env.get(many):
            raise ConfigError(f"{many}: set {single} or {many}, not both")
        if env.get(single):
            entries, name = [(scope, env[single])], single
        elif env.get(many):
            name = many
            entries = []
            for part in env[many].split(","):
                label, sep, token = part.strip().partition(":")
                if not sep or not _LABEL.fullmatch(label):
                    raise ConfigError(
                        f"{many} must be label:token,... with labels of 1-"
                        f"{limits.TOKEN_LABEL_LENGTH_MAX} chars of [a-z0-9._-]"
                    )
                entries.append((label, token))
        else:
            raise ConfigError(
                f"{single} is not set: give it a long random bearer token, or {many} several"
                " labelled ones (make run generates one per scope)"
            )
        if len(entries) > limits.TOKENS_PER_SCOPE_MAX:
            raise ConfigError(f"{name}: at most {limits.TOKENS_PER_SCOPE_MAX} tokens per scope")
        for label, token in entries:
            if len(token) < limits.TOKEN_LENGTH_MIN or not token.isascii():
                raise ConfigError(
                    f"{name}: a token must be at least {limits.TOKEN_LENGTH_MIN} ASCII characters"
                )
            if any(c.isspace() for c in token):
                raise ConfigError(f"{name}: a token must not contain whitespace")
            if token in where:
                raise ConfigError(f"{name}: a token is also used by {where[token]}")
            if label in labels:
                raise ConfigError(f"{name}: label {label!r} is also used by {labels[label]}")
            where[token] = name
            labels[label] = name
            found.append(Token(scope, label, Secret(token)))
    return tuple(found)


def _is_host_port(value: str) -> bool:
    host, _, port = value.rpartition(":")
    return bool(host) and port.isdigit() and int(port) <= 65535


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    database_url: str | None
    grpc_address: str
    tokens: tuple[Token, ...]
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
    # Server processes on one port (server/workers.py); from the environment, one per core.
    grpc_workers: int = 1
    # Balance alerts, expiry notices, webhooks, auto-recharge (server/events/settings.py).
    events: EventsConfig = dataclasses.field(default_factory=EventsConfig)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServerConfig:
        env = os.environ if env is None else env

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
            tokens=parse_tokens(env),
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
            grpc_workers=_workers(env),
            events=EventsConfig.from_env(env),
        )
        if not _is_host_port(cfg.grpc_address):
            raise ConfigError(
                f"GRPC_ADDRESS must be host:port (e.g. 127.0.0.1:50051), not {cfg.grpc_address!r}"
            )
        if cfg.metrics_address is not None and not _is_host_port(cfg.metrics_address):
            raise ConfigError("METRICS_ADDRESS must be host:port")
        _check_tls(cfg)
        return cfg


def cores() -> int:
    """The cores this process may run on (a container's share, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _workers(env: Mapping[str, str]) -> int:
    default = min(cores(), limits.GRPC_WORKERS_MAX)
    value = env.get("GRPC_WORKERS", "") or str(default)
    if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= limits.GRPC_WORKERS_MAX:
        raise ConfigError(
            f"GRPC_WORKERS must be 1-{limits.GRPC_WORKERS_MAX} server processes "
            f"(default: one per core, {default} here), not {value!r}"
        )
    return int(value)


def _check_tls(cfg: ServerConfig) -> None:
    """TLS is all or nothing: a client CA without a certificate must not mean plaintext."""
    if cfg.tls_cert_path is None and cfg.tls_key_path is None:
        if cfg.tls_client_ca_path is not None:
            raise ConfigError(
                "TLS_CLIENT_CA_PATH needs TLS_CERT_PATH and TLS_KEY_PATH (mutual TLS is TLS)"
            )
        return
    if cfg.tls_cert_path is None or cfg.tls_key_path is None:
        missing = "TLS_CERT_PATH" if cfg.tls_cert_path is None else "TLS_KEY_PATH"
        raise ConfigError(f"{missing} is required: TLS_CERT_PATH and TLS_KEY_PATH go together")


def _non_negative(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name, str(default))
    if not value.isascii() or not value.isdigit():
        raise ConfigError(f"{name} must be a non-negative integer")
    return int(value)
