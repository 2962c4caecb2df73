"""The aiohttp application: Stripe webhooks in, BillingService RPCs out; rollover; health.

Answers:
- ``POST /stripe/webhook``: 200 once the ledger committed (or the event is ignored or a
  duplicate, a payment already granted under another object included); 400 for a bad
  signature, a timestamp over 300 s off either way, a non-UTF-8, malformed or absurdly nested
  body; 408 when the body does not arrive in time; 413 over 1 MiB; 422 when what was paid is
  not what the catalog charges (currency, pre-discount amount, live/test mode: nothing is
  granted, the reason is in the body, logged and counted); 5xx when the ledger or the price
  cannot be reached or agreed on, so Stripe retries (the event id is the request_id: a retry
  applies once).
- ``POST /rollover`` (bearer CRON_SECRET): the Rollover RPC's summary as JSON.
- ``GET /healthz``: 200 when the ledger answers its gRPC health check, else 503.
- ``GET /metrics``: Prometheus text.
Never a 3xx. The ledger is reached through the project's own client (deadlines, typed
errors, TLS or mutual TLS from ``LEDGER_TLS_*``), one for the app's lifetime
(``cleanup_ctx``); its channel reconnects itself.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import stripe
from aiohttp import web
from creditwallet.client import errors as cw
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.core import limits, logs, protojson
from creditwallet.gateway import catalog, events
from creditwallet.gateway.config import GatewayConfig
from creditwallet.gateway.stripe_api import StripeApi
from creditwallet.v1 import billing_service_pb2 as bpb
from prometheus_client import CollectorRegistry, Counter, generate_latest

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry()
WEBHOOKS = Counter(
    "gateway_webhook_events",
    "Stripe webhook deliveries by event type and outcome",
    ["type", "outcome"],
    registry=REGISTRY,
)

PAYMENT_MISMATCHES = Counter(
    "gateway_payment_mismatches",
    "Checkouts refused because what was paid is not what the catalog charges, by reason",
    ["reason"],
    registry=REGISTRY,
)

CONFIG = web.AppKey("config", GatewayConfig)
LEDGER = web.AppKey("ledger", AsyncCreditWalletClient)
ROLLOVER_LEDGER = web.AppKey("rollover_ledger", AsyncCreditWalletClient)
MAPPER = web.AppKey("mapper", events.Mapper)


def create_app(config: GatewayConfig) -> web.Application:
    app = web.Application(client_max_size=limits.GATEWAY_BODY_BYTES_MAX)
    app[CONFIG] = config
    app.cleanup_ctx.append(_resources)
    app.router.add_post("/stripe/webhook", stripe_webhook)
    app.router.add_post("/rollover", rollover)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


async def _resources(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    ledger = ledger_client(config, config.rpc_timeout_seconds)
    rollover_ledger = ledger_client(config, config.rollover_timeout_seconds)
    api = StripeApi(config.stripe_secret_key, config.stripe_api_base, config.stripe_timeout_seconds)
    app[LEDGER] = ledger
    app[ROLLOVER_LEDGER] = rollover_ledger
    app[MAPPER] = events.Mapper(api, catalog.load(config.catalog_path), livemode=config.livemode)
    yield
    await api.close()
    await ledger.close()
    await rollover_ledger.close()


def ledger_client(config: GatewayConfig, timeout_seconds: float) -> AsyncCreditWalletClient:
    """The project's client with the billing token; no retries (Stripe and cron retry)."""

    def read(path: Path | None) -> bytes | None:
        return path.read_bytes() if path is not None else None

    return AsyncCreditWalletClient(
        config.ledger_target,
        config.billing_token.value,
        timeout_seconds=timeout_seconds,
        retries=0,
        tls=config.ledger_tls,
        root_certificates=read(config.ledger_tls_ca_path),
        private_key=read(config.ledger_tls_key_path),
        certificate_chain=read(config.ledger_tls_cert_path),
    )


def _verify(config: GatewayConfig, body: bytes, header: str) -> str | None:
    """The payload as text if signed by one of the secrets and fresh; None otherwise."""
    try:
        payload = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    timestamps = [p[2:] for p in header.split(",") if p.startswith("t=")]
    if len(timestamps) != 1 or not timestamps[0].isdigit():
        return None
    if int(timestamps[0]) > time.time() + limits.GATEWAY_SIGNATURE_TOLERANCE_SECONDS:
        return None  # the library only checks the past
    for secret in config.webhook_secrets:
        try:
            stripe.WebhookSignature.verify_header(
                payload, header, secret.value, tolerance=limits.GATEWAY_SIGNATURE_TOLERANCE_SECONDS
            )
        except stripe.SignatureVerificationError:
            continue
        return payload
    return None


def _parse(payload: str) -> dict[str, Any] | None:
    try:
        event = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if _depth_exceeds(event, limits.GATEWAY_JSON_DEPTH_MAX):
        return None
    valid = (
        isinstance(event, dict)
        and isinstance(event.get("id"), str)
        and isinstance(event.get("type"), str)
        and type(event.get("created")) is int
        and isinstance(event.get("data"), dict)
        and isinstance(event["data"].get("object"), dict)
    )
    return event if valid else None


def _depth_exceeds(value: Any, depth_max: int) -> bool:
    """Whether JSON ``value`` nests deeper than ``depth_max`` (iterative: no recursion)."""
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > depth_max:
            return True
        pending.extend((child, depth + 1) for child in children)
    return False


async def stripe_webhook(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    try:
        async with asyncio.timeout(config.body_timeout_seconds):
            body = await request.read()  # raises 413 over client_max_size
    except TimeoutError:
        WEBHOOKS.labels("unknown", "slow_body").inc()
        return web.json_response(
            {"error": "request timeout", "reason": "the body did not arrive in time"}, status=408
        )
    except ConnectionResetError:  # the sender hung up mid-body: nothing to answer, no error
        log.info("client hung up before its request body arrived")
        return web.Response(status=400)
    payload = _verify(config, body, request.headers.get("Stripe-Signature", ""))
    if payload is None:
        WEBHOOKS.labels("unknown", "bad_signature").inc()
        return web.json_response(
            {
                "error": "bad signature or stale timestamp",
                "reason": "the Stripe-Signature header must sign this body with one of the "
                "STRIPE_WEBHOOK_SECRET secrets, with a timestamp within 300 s of now",
            },
            status=400,
        )
    event = _parse(payload)
    if event is None:
        WEBHOOKS.labels("unknown", "malformed").inc()
        return web.json_response(
            {
                "error": "malformed event",
                "reason": "a Stripe event is a JSON object with a string id and type, an "
                "integer created and an object data.object, nested at most "
                f"{limits.GATEWAY_JSON_DEPTH_MAX} deep",
            },
            status=400,
        )
    with logs.request_context(event["id"]):
        return await _handle(request.app, event)


async def _handle(app: web.Application, event: dict[str, Any]) -> web.Response:
    """One verified event; every refusal says why in its body (``error``, ``reason``)."""
    kind = event["type"]
    label = kind if kind in events.HANDLED else "other"
    try:
        mapped = await app[MAPPER].map(event)
    except catalog.PriceError as exc:
        WEBHOOKS.labels(label, "price_unknown").inc()
        log.error("event refused: %s", exc, extra={"event_type": kind})
        return web.json_response(
            {"error": "price credits unknown or disputed", "reason": str(exc)}, status=500
        )
    except catalog.PaymentMismatch as exc:
        WEBHOOKS.labels(label, "payment_mismatch").inc()
        PAYMENT_MISMATCHES.labels(exc.reason).inc()
        log.error("event grants nothing: %s", exc, extra={"event_type": kind})
        return web.json_response(
            {
                "error": "payment does not match the catalog",
                "reason": exc.reason,
                "detail": exc.detail,
            },
            status=422,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        WEBHOOKS.labels(label, "malformed").inc()
        log.warning("event malformed: %s", type(exc).__name__, extra={"event_type": kind})
        return web.json_response(
            {"error": "malformed event object", "reason": _malformed_reason(exc)}, status=400
        )
    if isinstance(mapped, events.Ignored):
        WEBHOOKS.labels(label, "ignored").inc()
        log.info("event ignored: %s", mapped.reason, extra={"event_type": kind})
        return web.json_response({"ignored": mapped.reason})
    return await _forward(app, label, event["id"], mapped)


def _malformed_reason(exc: Exception) -> str:
    """Which part of the event object was missing or of the wrong type, without its value."""
    if isinstance(exc, KeyError):
        return f"field {exc.args[0]!r} is missing" if exc.args else "a field is missing"
    return f"a field has the wrong type or value ({type(exc).__name__})"


async def _forward(
    app: web.Application, label: str, event_id: str, call: events.Call
) -> web.Response:
    """The event's call, then the calls it also needs, in order; the first refusal answers
    (Stripe retries the event, and every call already applied replays its stored answer)."""
    results: list[dict[str, Any]] = []
    for one in (call, *call.also):
        answered = await _call(app, label, event_id, one)
        if isinstance(answered, web.Response):
            return answered
        results.append(answered)
    body = results[0]
    if len(results) > 1:
        body = {**body, "also": results[1:]}
    return web.json_response(body)


async def _call(
    app: web.Application, label: str, event_id: str, call: events.Call
) -> dict[str, Any] | web.Response:
    rpc = getattr(app[LEDGER].billing, call.method)
    try:
        response = await rpc(call.request)
    except cw.CreditWalletError as exc:
        code = exc.code
        WEBHOOKS.labels(label, "ledger_" + code.name.lower()).inc()
        if code == grpc.StatusCode.ALREADY_EXISTS:
            # REQUEST_ID_REUSED: this event was applied once already, mapped from an earlier
            # answer of Stripe's API (a subscription or price read then); it is done.
            log.warning("event %s was already applied with other details", event_id)
            return {"method": call.method, "already_applied": True}
        body = {"error": f"ledger: {code.name}", "reason": exc.message or exc.reason}
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            # The event's content can never be applied as sent: a malformed event, as
            # any other (400), for an operator to look at; retrying would change nothing.
            log.error("event refused by the ledger as malformed: %s", exc.message)
            return web.json_response(body, status=400)
        log.warning("ledger answered %s", code.name, extra={"method": call.method})
        status = (
            503 if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) else 500
        )
        return web.json_response(body, status=status)
    outcome = "replayed" if getattr(response, "replayed", False) else "applied"
    if getattr(response, "already_recorded", False):
        outcome = "already_recorded"
    WEBHOOKS.labels(label, outcome).inc()
    return {"method": call.method, "result": protojson.to_dict(response)}


async def rollover(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    header = request.headers.get("Authorization", "")
    expected = b"Bearer " + config.cron_secret.bytes()
    if not hmac.compare_digest(header.encode("utf-8", "replace"), expected):
        return web.json_response(
            {"error": "unauthorized", "reason": "send Authorization: Bearer $CRON_SECRET"},
            status=401,
        )
    period = request.query.get("period", "")
    try:
        response = await request.app[ROLLOVER_LEDGER].billing.Rollover(
            bpb.RolloverRequest(period=period)
        )
    except cw.CreditWalletError as exc:
        status = 400 if exc.code == grpc.StatusCode.INVALID_ARGUMENT else 503
        return web.json_response(
            {"error": f"ledger: {exc.code.name}", "reason": exc.message or exc.reason},
            status=status,
        )
    return web.json_response(protojson.to_dict(response))


async def healthz(request: web.Request) -> web.Response:
    if await request.app[LEDGER].serving():
        return web.json_response({"ledger": "serving"})
    return web.json_response({"ledger": "unreachable or not serving"}, status=503)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(REGISTRY), content_type="text/plain", charset="utf-8")
