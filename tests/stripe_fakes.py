"""Stripe as the tests see it: fixture objects, signed events, a local Stripe API, a gateway.

Objects are copies of Stripe's published fixture objects (stripe_objects.json)
and only the fields a scenario needs are set. Events are signed exactly as Stripe signs them:
``Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">``.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import hmac
import io
import itertools
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from creditwallet.core.settings import Secret
from creditwallet.gateway import serving
from creditwallet.gateway.app import create_app
from creditwallet.gateway.config import DEFAULT_CATALOG_PATH, GatewayConfig

# Stripe's published OpenAPI fixture objects, as of 2026-08-21.
OBJECTS: dict[str, Any] = json.loads(Path(__file__).with_name("stripe_objects.json").read_text())
SECRETS = ("whsec_test_current_" + "x" * 16, "whsec_test_next_" + "y" * 16)
CRON_SECRET = "cron-secret-" + "z" * 20
MONTHLY = "price_cw_monthly_250"
TOP_UP_500 = "price_cw_topup_500"
_ids = itertools.count(1)


def new_id(prefix: str) -> str:
    return f"{prefix}_{next(_ids)}_{int(time.time() * 1000) % 10**8}"


def obj(kind: str, **fields: Any) -> dict[str, Any]:
    value = copy.deepcopy(OBJECTS[kind])
    value.update(fields)
    return dict(value)


def event(kind: str, data: dict[str, Any], created: int, event_id: str | None = None) -> bytes:
    body = obj("event", id=event_id or new_id("evt"), type=kind, created=created)
    body["data"] = {"object": data}
    return json.dumps(body).encode()


def sign(body: bytes, secret: str = SECRETS[0], at: int | None = None) -> str:
    t = int(time.time()) if at is None else at
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def price(
    price_id: str,
    credits: int | None,
    *,
    recurring: bool,
    interval: str = "month",
    interval_count: int = 1,
) -> dict[str, Any]:
    product = obj("product", id="prod_" + price_id, metadata={})
    metadata = {"credits": str(credits)} if credits is not None else {}
    terms = dict(OBJECTS["price"]["recurring"], interval=interval, interval_count=interval_count)
    return obj(
        "price",
        id=price_id,
        metadata=metadata,
        product=product,
        recurring=terms if recurring else None,
        type="recurring" if recurring else "one_time",
    )


def line_item(price_obj: dict[str, Any], quantity: int = 1) -> dict[str, Any]:
    return obj("item", id=new_id("li"), price=price_obj, quantity=quantity)


def period_line(
    sub_id: str,
    start: int,
    end: int,
    *,
    price_id: str = MONTHLY,
    amount: int = 999,
    proration: bool = False,
    item: str = "si_x",
) -> dict[str, Any]:
    """An invoice line billing a subscription item for [start, end) (parent: the item)."""
    line = obj("line_item", id=new_id("il"), period={"start": start, "end": end}, amount=amount)
    line["parent"] = {
        "type": "subscription_item_details",
        "subscription_item_details": {
            "subscription": sub_id,
            "subscription_item": item,
            "invoice_item": None,
            "proration": proration,
            "proration_details": {"credited_items": None},
        },
        "invoice_item_details": None,
    }
    line["pricing"] = {"type": "price_details", "price_details": {"price": price_id}}
    return line


def proration_line(
    sub_id: str, start: int, end: int, *, price_id: str, amount: int
) -> dict[str, Any]:
    """A proration invoice item (an upgrade's or downgrade's credit or debit for [start, end))."""
    line = obj("line_item", id=new_id("il"), period={"start": start, "end": end}, amount=amount)
    line["parent"] = {
        "type": "invoice_item_details",
        "invoice_item_details": {
            "invoice_item": new_id("ii"),
            "proration": True,
            "proration_details": {"credited_items": None},
            "subscription": sub_id,
        },
        "subscription_item_details": None,
    }
    line["pricing"] = {"type": "price_details", "price_details": {"price": price_id}}
    return line


def invoice(
    sub_id: str,
    customer: str,
    start: int,
    end: int,
    *,
    payment: str,
    paid: int = 999,
    billing_reason: str = "subscription_cycle",
    lines: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A paid subscription invoice; by default one period line for [start, end)."""
    if lines is None:
        lines = [period_line(sub_id, start, end, amount=paid)]
    inv = obj(
        "invoice",
        id=new_id("in"),
        customer=customer,
        amount_paid=paid,
        currency="usd",
        billing_reason=billing_reason,
        status="paid",
    )
    inv["lines"] = {"object": "list", "data": lines, "has_more": False}
    inv["parent"] = {
        "type": "subscription_details",
        "subscription_details": {"subscription": sub_id, "metadata": {}},
    }
    inv["payments"] = {"data": [{"payment": {"type": "payment_intent", "payment_intent": payment}}]}
    return inv


def subscription(
    sub_id: str,
    customer: str,
    status: str,
    start: int,
    end: int,
    price_obj: dict[str, Any],
    *,
    anchor: int | None = None,
    trial: tuple[int, int] | None = None,
    item: str = "si_x",
) -> dict[str, Any]:
    """A subscription whose item bills [start, end); its anchor defaults to ``start``."""
    item_obj = obj(
        "subscription_item",
        id=item,
        current_period_start=start,
        current_period_end=end,
        price=price_obj,
    )
    sub = obj(
        "subscription",
        id=sub_id,
        customer=customer,
        status=status,
        cancel_at_period_end=False,
        billing_cycle_anchor=start if anchor is None else anchor,
        billing_cycle_anchor_config=None,
        trial_start=trial[0] if trial else None,
        trial_end=trial[1] if trial else None,
        pause_collection=None,
        cancel_at=None,
        canceled_at=None,
        ended_at=None,
    )
    sub["items"] = {"object": "list", "data": [item_obj], "has_more": False}
    sub["metadata"] = {}
    return sub


@dataclasses.dataclass
class FakeStripe:
    """Stripe's API for the reads the gateway makes and the PaymentIntents auto-recharge
    creates; ``down`` makes every call fail.

    PaymentIntents follow Stripe's idempotency rules: a repeated ``Idempotency-Key`` with the
    same parameters returns the first answer and charges nothing more; with other parameters
    it is a 400 ``idempotency_error``. ``charges`` lists every PaymentIntent actually charged.
    A customer in ``declining`` gets a 402 ``card_error``. ``hold_create``, when set, keeps a
    create waiting until it is set (the charge is recorded either way, as Stripe would).
    """

    line_items: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)
    invoices: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    prices: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    customers: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    intents: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    charges: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    keys: dict[str, tuple[dict[str, str], int, dict[str, Any]]] = dataclasses.field(
        default_factory=dict
    )
    declining: set[str] = dataclasses.field(default_factory=set)
    creates: int = 0
    hold_create: Any = None
    create_arrived: Any = None
    subscriptions: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    down: bool = False

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/checkout/sessions/{id}/line_items", self._line_items)
        app.router.add_get("/v1/invoices/{id}", self._invoice)
        app.router.add_get("/v1/prices/{id}", self._price)
        app.router.add_get("/v1/customers/{id}", self._customer)
        app.router.add_post("/v1/payment_intents", self._create_intent)
        app.router.add_get("/v1/subscriptions/{id}", self._subscription)
        return app

    async def _customer(self, request: web.Request) -> web.Response:
        return self._found(self.customers.get(request.match_info["id"]))

    async def _create_intent(self, request: web.Request) -> web.Response:
        self.creates += 1
        if self.down:
            return web.json_response({"error": {"type": "api_error"}}, status=500)
        params = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        key = request.headers.get("Idempotency-Key", "")
        if key in self.keys:
            first_params, status, body = self.keys[key]
            if first_params != params:
                error = {
                    "type": "idempotency_error",
                    "message": "Keys for idempotent requests "
                    "can only be used with the same parameters they were first used with.",
                }
                return web.json_response({"error": error}, status=400)
            return web.json_response(body, status=status, headers={"Idempotent-Replayed": "true"})
        customer = params.get("customer", "")
        intent = obj(
            "payment_intent",
            id=new_id("pi"),
            amount=int(params["amount"]),
            amount_received=0,
            currency=params["currency"],
            customer=customer,
            payment_method=params.get("payment_method"),
            metadata={k[9:-1]: v for k, v in params.items() if k.startswith("metadata[")},
            last_payment_error=None,
            next_action=None,
            canceled_at=None,
        )
        if customer in self.declining:
            intent["status"] = "requires_payment_method"
            declined: dict[str, Any] = {
                "type": "card_error",
                "code": "card_declined",
                "decline_code": "insufficient_funds",
                "message": "Your card has insufficient funds.",
                "payment_intent": intent,
            }
            status, body = 402, {"error": declined}
        else:
            intent.update(status="succeeded", amount_received=intent["amount"])
            self.charges.append(intent)
            status, body = 200, intent
        self.intents[intent["id"]] = intent
        if key:
            self.keys[key] = (params, status, body)
        if self.create_arrived is not None:
            self.create_arrived.set()
        if self.hold_create is not None:
            await self.hold_create.wait()
        return web.json_response(body, status=status)

    def _found(self, value: Any) -> web.Response:
        if self.down:
            return web.json_response({"error": {"type": "api_error"}}, status=500)
        if value is None:
            return web.json_response(
                {"error": {"type": "invalid_request_error", "message": "No such object"}},
                status=404,
            )
        return web.json_response(value)

    async def _line_items(self, request: web.Request) -> web.Response:
        items = self.line_items.get(request.match_info["id"])
        listed = None if items is None else {"object": "list", "data": items, "has_more": False}
        return self._found(listed)

    async def _invoice(self, request: web.Request) -> web.Response:
        return self._found(self.invoices.get(request.match_info["id"]))

    async def _price(self, request: web.Request) -> web.Response:
        return self._found(self.prices.get(request.match_info["id"]))

    async def _subscription(self, request: web.Request) -> web.Response:
        return self._found(self.subscriptions.get(request.match_info["id"]))


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


def catalog_with(folder: Path, extra: dict[str, dict[str, Any]]) -> Path:
    """The built-in catalog plus ``extra`` prices, written to ``folder``: the gateway grants
    only what its catalog allows, so a test's own price must be in it."""
    raw = json.loads(DEFAULT_CATALOG_PATH.read_text(encoding="utf-8"))
    raw["prices"].update(extra)
    path = folder / "catalog.json"
    path.write_text(json.dumps(raw), encoding="utf-8")
    return path


def gateway_config(ledger_target: str, stripe_base: str, billing_token: str) -> GatewayConfig:
    return GatewayConfig(
        host="127.0.0.1",
        port=0,
        ledger_target=ledger_target,
        billing_token=Secret(billing_token),
        webhook_secrets=tuple(Secret(s) for s in SECRETS),
        cron_secret=Secret(CRON_SECRET),
        stripe_secret_key=Secret("sk_test_fake"),
        stripe_api_base=stripe_base,
        rpc_timeout_seconds=3.0,
        stripe_timeout_seconds=2.0,
    )


@dataclasses.dataclass
class Gateway:
    url: str
    http: aiohttp.ClientSession

    async def deliver(
        self, body: bytes, *, secret: str = SECRETS[0], at: int | None = None
    ) -> aiohttp.ClientResponse:
        headers = {"Stripe-Signature": sign(body, secret, at), "Content-Type": "application/json"}
        data = io.BytesIO(body)
        async with self.http.post(self.url + "/stripe/webhook", data=data, headers=headers) as r:
            await r.read()
            return r


async def start_gateway(config: GatewayConfig, **bounds: Any) -> tuple[web.AppRunner, str]:
    """The gateway as its process serves it (header/body timeouts, connection cap)."""
    runner, site = await serving.start(create_app(config), "127.0.0.1", 0, **bounds)
    return runner, f"http://127.0.0.1:{site.port}"
