"""Reads from Stripe's API with the ``stripe`` library's async client, each with a timeout.

A completed checkout session does not carry its line items; invoices and prices named by id
do not carry their metadata; an invoice does not carry its subscription's billing schedule.
Every read here returns ``None`` when Stripe cannot answer
(no key configured, timeout, error): the caller then falls back to the local catalog.
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import stripe
from creditwallet.core.settings import Secret

log = logging.getLogger(__name__)


class StripeApi:
    def __init__(self, key: Secret | None, api_base: str | None, timeout_seconds: float) -> None:
        self._client: Any = None
        self._http: Any = None
        if key is None:
            return
        self._http = stripe.AIOHTTPClient(timeout=aiohttp.ClientTimeout(total=timeout_seconds))
        self._client = stripe.StripeClient(
            key.value,
            base_addresses={"api": api_base} if api_base else None,
            http_client=self._http,
            max_network_retries=0,
        )

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close_async()

    async def session_line_items(self, session_id: str) -> list[dict[str, Any]] | None:
        found = await self._read(
            "line items",
            lambda c: c.v1.checkout.sessions.line_items.list_async(
                session_id, params={"expand": ["data.price.product"], "limit": 100}
            ),
            many=True,
        )
        return found if isinstance(found, list) else None

    async def invoice(self, invoice_id: str) -> dict[str, Any] | None:
        # Current API versions name an invoice's payment only under its expanded payments.
        found = await self._read(
            "invoice",
            lambda c: c.v1.invoices.retrieve_async(invoice_id, params={"expand": ["payments"]}),
        )
        return found if isinstance(found, dict) else None

    async def subscription(self, subscription_id: str) -> dict[str, Any] | None:
        # Invoices do not carry the billing cycle anchor nor the price's interval.
        found = await self._read(
            "subscription", lambda c: c.v1.subscriptions.retrieve_async(subscription_id)
        )
        return found if isinstance(found, dict) else None

    async def price(self, price_id: str) -> dict[str, Any] | None:
        found = await self._read(
            "price",
            lambda c: c.v1.prices.retrieve_async(price_id, params={"expand": ["product"]}),
        )
        return found if isinstance(found, dict) else None

    async def _read(self, what: str, call: Any, *, many: bool = False) -> Any:
        if self._client is None:
            return None
        try:
            result = await call(self._client)
        except (stripe.StripeError, aiohttp.ClientError, TimeoutError) as exc:
            log.warning("stripe %s unavailable: %s", what, type(exc).__name__)
            return None
        data = result.to_dict()
        return list(data.get("data", [])) if many else data
