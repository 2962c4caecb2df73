"""The events' configuration: thresholds, lead time, webhook endpoints, Stripe, poll interval.

Read once from the environment with the rest of the server's configuration. A webhook
endpoint's secret is a Standard Webhooks secret (``whsec_`` + base64 of 24-64 random bytes);
it is kept as a ``Secret`` so that printing the configuration never shows it.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from creditwallet.core import limits
from creditwallet.core.settings import ConfigError, Secret
from creditwallet.server.events.types import EVENT_TYPES

_ENDPOINT_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@dataclasses.dataclass(frozen=True)
class WebhookEndpointConfig:
    endpoint_id: str
    url: str
    secret: Secret
    types: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class EventsConfig:
    balance_low_default_micros: int = limits.BALANCE_LOW_THRESHOLD_MICROS_DEFAULT
    expiring_lead_days: int = limits.CREDITS_EXPIRING_LEAD_DAYS_DEFAULT
    poll_seconds: float = limits.EVENTS_POLL_SECONDS_DEFAULT
    endpoints: tuple[WebhookEndpointConfig, ...] = ()
    stripe_secret_key: Secret | None = None
    stripe_api_base: str | None = None
    auto_recharge_failures_max: int = limits.AUTO_RECHARGE_FAILURES_MAX_DEFAULT
    # The background loops (sequencer, delivery, expiry notices, recharge payments).
    workers: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> EventsConfig:
        key = env.get("STRIPE_SECRET_KEY", "").strip()
        return cls(
            balance_low_default_micros=_integer(
                env,
                "BALANCE_LOW_THRESHOLD_MICROS",
                limits.BALANCE_LOW_THRESHOLD_MICROS_DEFAULT,
                limits.AMOUNT_MICROS_MAX,
            ),
            expiring_lead_days=_integer(
                env,
                "CREDITS_EXPIRING_LEAD_DAYS",
                limits.CREDITS_EXPIRING_LEAD_DAYS_DEFAULT,
                limits.CREDITS_EXPIRING_LEAD_DAYS_MAX,
            ),
            poll_seconds=_seconds(env, "EVENTS_POLL_SECONDS"),
            endpoints=parse_endpoints(env.get("WEBHOOK_ENDPOINTS", "")),
            stripe_secret_key=Secret(key) if key else None,
            stripe_api_base=env.get("STRIPE_API_BASE") or None,
            auto_recharge_failures_max=max(
                1,
                _integer(
                    env,
                    "AUTO_RECHARGE_FAILURES_MAX",
                    limits.AUTO_RECHARGE_FAILURES_MAX_DEFAULT,
                    1000,
                ),
            ),
            workers=env.get("EVENTS_WORKERS", "on") != "off",
        )


def parse_endpoints(value: str) -> tuple[WebhookEndpointConfig, ...]:
    """``WEBHOOK_ENDPOINTS``: a JSON list, inline or in the file it names."""
    value = value.strip()
    if not value:
        return ()
    if not value.startswith("["):
        try:
            value = Path(value).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"WEBHOOK_ENDPOINTS: cannot read {value}: {exc.strerror}") from None
    try:
        raw = json.loads(value)
    except ValueError:
        raise ConfigError("WEBHOOK_ENDPOINTS is not valid JSON") from None
    if not isinstance(raw, list) or len(raw) > limits.WEBHOOK_ENDPOINTS_MAX:
        raise ConfigError(
            f"WEBHOOK_ENDPOINTS must be a list of at most {limits.WEBHOOK_ENDPOINTS_MAX} endpoints"
        )
    endpoints = tuple(_endpoint(item, index) for index, item in enumerate(raw))
    ids = [e.endpoint_id for e in endpoints]
    if len(set(ids)) != len(ids):
        raise ConfigError("WEBHOOK_ENDPOINTS: two endpoints share an id")
    return endpoints


def _endpoint(item: Any, index: int) -> WebhookEndpointConfig:
    where = f"WEBHOOK_ENDPOINTS[{index}]"
    if not isinstance(item, dict):
        raise ConfigError(f"{where} must be an object with id, url and secret")
    endpoint_id, url, secret = item.get("id"), item.get("url"), item.get("secret")
    if not isinstance(endpoint_id, str) or not _ENDPOINT_ID.match(endpoint_id):
        raise ConfigError(f"{where}.id must be 1-64 characters of [A-Za-z0-9._-]")
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}.url must be an http(s) URL")
    if not isinstance(secret, str) or not valid_secret(secret):
        raise ConfigError(f"{where}.secret must be a Standard Webhooks secret (whsec_<base64>)")
    types = item.get("types", [])
    if not isinstance(types, list) or any(t not in EVENT_TYPES for t in types):
        raise ConfigError(f"{where}.types must list known event types (docs/events.md)")
    assert isinstance(url, str)
    return WebhookEndpointConfig(endpoint_id, url, Secret(secret), tuple(types))


def valid_secret(secret: str) -> bool:
    import base64
    import binascii

    if not secret.startswith("whsec_"):
        return False
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        return False
    return limits.WEBHOOK_KEY_BYTES_MIN <= len(key) <= limits.WEBHOOK_KEY_BYTES_MAX


def _integer(env: Mapping[str, str], name: str, default: int, maximum: int) -> int:
    value = env.get(name, str(default)).strip()
    if not value.isascii() or not value.isdigit() or int(value) > maximum:
        raise ConfigError(f"{name} must be an integer from 0 to {maximum}")
    return int(value)


def _seconds(env: Mapping[str, str], name: str) -> float:
    value = env.get(name, "")
    if not value:
        return limits.EVENTS_POLL_SECONDS_DEFAULT
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not limits.EVENTS_POLL_SECONDS_MIN <= seconds <= limits.EVENTS_POLL_SECONDS_MAX:
        raise ConfigError(
            f"{name} must be seconds from {limits.EVENTS_POLL_SECONDS_MIN} "
            f"to {limits.EVENTS_POLL_SECONDS_MAX}"
        )
    return seconds
