"""``creditwallet dev webhook``: Stripe's webhooks, signed locally, for a development run.

Why here and not Stripe's own tools: a development run has no Stripe account behind it, and
the gateway must still be exercised end to end, signature check included. Stripe signs a
delivery with ``Stripe-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">`` keyed
by the endpoint's secret; this module does the same with ``STRIPE_WEBHOOK_SECRET``, so the
gateway verifies it exactly as it verifies Stripe's. Only the standard library is used: the
CLI is part of the plain install, which has no HTTP client library.

The event is the shape Stripe sends for a paid Checkout Session in ``payment`` mode. With no
``STRIPE_SECRET_KEY`` the gateway cannot read a session's line items from Stripe's API, so
the session names its price in ``metadata.price_id``, and the gateway's catalog gives the
credits (a real Checkout Session may carry the same metadata).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import secrets
import time
import urllib.error
import urllib.request
from importlib import resources
from pathlib import Path
from typing import Any, Final

from creditwallet.core import limits

WEBHOOK_PATH: Final = "/stripe/webhook"


@dataclasses.dataclass(frozen=True)
class Delivery:
    """What the gateway answered: its HTTP status and its JSON body."""

    status: int
    body: dict[str, Any]


class GatewayUnreachable(Exception):
    """No HTTP answer at all (refused, timed out): nothing is known about the event."""


def top_up_event(user_id: str, price_id: str, amount_paid_minor: int = 0) -> dict[str, Any]:
    """A ``checkout.session.completed`` event of a paid one-off purchase; fresh ids each call."""
    now = int(time.time())
    suffix = secrets.token_hex(8)
    return {
        "id": f"evt_local_{suffix}",
        "object": "event",
        "type": "checkout.session.completed",
        "created": now,
        "livemode": False,
        "data": {
            "object": {
                "id": f"cs_local_{suffix}",
                "object": "checkout.session",
                "mode": "payment",
                "status": "complete",
                "payment_status": "paid",
                "livemode": False,
                "client_reference_id": user_id,
                "metadata": {"price_id": price_id},
                "payment_intent": f"pi_local_{suffix}",
                "customer": None,
                "amount_subtotal": amount_paid_minor,
                "amount_total": amount_paid_minor,
                "currency": "usd",
                "created": now,
            }
        },
    }


def catalog_price(price_id: str, catalog_path: str | None) -> int:
    """The price's ``unit_amount`` in the gateway's catalog (``CATALOG_PATH``, else the built-in
    one), which a checkout must have paid to be granted; 0 when the price is not in it."""
    if catalog_path is not None:
        text = Path(catalog_path).read_text(encoding="utf-8")
    else:
        text = (resources.files("creditwallet.gateway") / "catalog.json").read_text("utf-8")
    entry = json.loads(text).get("prices", {}).get(price_id) or {}
    amount = entry.get("unit_amount", 0)
    return amount if isinstance(amount, int) else 0


def signature(secret: str, body: bytes, timestamp: int) -> str:
    """The ``Stripe-Signature`` header of ``body`` at ``timestamp`` under ``secret``."""
    signed = f"{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def send(url: str, secret: str, event: dict[str, Any]) -> Delivery:
    """POST the signed event; the gateway's answer, whatever its status."""
    body = json.dumps(event, separators=(",", ":")).encode()
    request = urllib.request.Request(  # noqa: S310 - the URL is the operator's own gateway
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Stripe-Signature": signature(secret, body, int(time.time())),
        },
    )
    try:
        with urllib.request.urlopen(  # noqa: S310
            request, timeout=limits.CLI_WEBHOOK_TIMEOUT_SECONDS
        ) as reply:
            return Delivery(reply.status, _json(reply.read()))
    except urllib.error.HTTPError as refused:
        return Delivery(refused.code, _json(refused.read()))
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise GatewayUnreachable(f"no answer from {url}: {reason}") from None


def _json(raw: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(raw)
    except ValueError:
        return {"body": raw.decode("utf-8", "replace")}
    return parsed if isinstance(parsed, dict) else {"body": parsed}
