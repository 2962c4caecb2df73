"""The aiohttp application: Stripe webhooks in, BillingService RPCs out; rollover; health.

Answers:
- ``POST /stripe/webhook``: 200 once the ledger committed (or the event is ignored or a
  duplicate); 400 for a bad signature, a timestamp over 300 s off either way, a non-UTF-8
  or malformed body; 413 over 1 MiB; 5xx when the ledger or the price cannot be reached or
  agreed on, so Stripe retries (the event id is the request_id: a retry applies once).
- ``POST /rollover`` (bearer CRON_SECRET): the Rollover RPC's summary as JSON.
- ``GET /healthz``: 200 when the ledger answers its gRPC health check, else 503.
- ``GET /metrics``: Prometheus text.
Never a 3xx. One gRPC channel for the app's lifetime (``cleanup_ctx``); it reconnects itself.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import stripe
from aiohttp import web
from creditwallet.core import limits, logs, protojson
from creditwallet.gateway import catalog, events
from creditwallet.gateway.config import GatewayConfig
from creditwallet.gateway.stripe_api import StripeApi
from creditwallet.v1 import billing_service_pb2 as bpb
from creditwallet.v1 import billing_service_pb2_grpc as bgrpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry, Counter, generate_latest

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry()
WEBHOOKS = Counter(
    "gateway_webhook_events",
    "Stripe webhook deliveries by event type and outcome",
    ["type", "outcome"],
    registry=REGISTRY,
)

CONFIG = web.AppKey("config", GatewayConfig)
CHANNEL = web.AppKey("channel", grpc.aio.Channel)
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
    options = [
        ("grpc.max_receive_message_length", limits.GRPC_MESSAGE_BYTES_MAX),
        ("grpc.max_send_message_length", limits.GRPC_MESSAGE_BYTES_MAX),
        # A restarted ledger is found again within about a second, not minutes.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]
    channel = grpc.aio.insecure_channel(config.ledger_target, options=options)
    api = StripeApi(config.stripe_secret_key, config.stripe_api_base, config.stripe_timeout_seconds)
    app[CHANNEL] = channel
    app[MAPPER] = events.Mapper(api, catalog.load(config.catalog_path))
    yield
    await api.close()
    await channel.close(grace=1.0)


def _metadata(config: GatewayConfig) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {config.billing_token.value}"),)


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
    except ValueError:
        return None
    valid = (
        isinstance(event, dict)
        and isinstance(event.get("id"), str)
        and isinstance(event.get("type"), str)
        and isinstance(event.get("created"), int)
        and isinstance((event.get("data") or {}).get("object"), dict)
    )
    return event if valid else None


async def stripe_webhook(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    try:
        body = await request.read()  # raises 413 over client_max_size
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
                "integer created and an object data.object",
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
    config = app[CONFIG]
    stub = bgrpc.BillingServiceStub(app[CHANNEL])
    try:
        response = await getattr(stub, call.method)(
            call.request, timeout=config.rpc_timeout_seconds, metadata=_metadata(config)
        )
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
        WEBHOOKS.labels(label, "ledger_" + code.name.lower()).inc()
        if code == grpc.StatusCode.ALREADY_EXISTS:
            # REQUEST_ID_REUSED: this event was applied once already, mapped from an earlier
            # answer of Stripe's API (a subscription or price read then); it is done.
            log.warning("event %s was already applied with other details", event_id)
            return web.json_response({"method": call.method, "already_applied": True})
        body = {"error": f"ledger: {code.name}", "reason": exc.details() or code.name}
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            # The event's content can never be applied as sent: a malformed event, as
            # any other (400), for an operator to look at; retrying would change nothing.
            log.error("event refused by the ledger as malformed: %s", exc.details())
            return web.json_response(body, status=400)
        log.warning("ledger answered %s", code.name, extra={"method": call.method})
        status = (
            503 if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) else 500
        )
        return web.json_response(body, status=status)
    WEBHOOKS.labels(label, "replayed" if getattr(response, "replayed", False) else "applied").inc()
    return web.json_response({"method": call.method, "result": protojson.to_dict(response)})


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
    stub = bgrpc.BillingServiceStub(request.app[CHANNEL])
    try:
        response = await stub.Rollover(
            bpb.RolloverRequest(period=period),
            timeout=config.rollover_timeout_seconds,
            metadata=_metadata(config),
        )
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
        status = 400 if code == grpc.StatusCode.INVALID_ARGUMENT else 503
        return web.json_response(
            {"error": f"ledger: {code.name}", "reason": exc.details() or code.name},
            status=status,
        )
    return web.json_response(protojson.to_dict(response))


async def healthz(request: web.Request) -> web.Response:
    stub = health_pb2_grpc.HealthStub(request.app[CHANNEL])
    try:
        answer = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2.0)
    except grpc.aio.AioRpcError as exc:
        return web.json_response({"ledger": "unreachable", "code": exc.code().name}, status=503)
    serving = answer.status == health_pb2.HealthCheckResponse.SERVING
    return web.json_response(
        {"ledger": "serving" if serving else "not_serving"}, status=200 if serving else 503
    )


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(REGISTRY), content_type="text/plain", charset="utf-8")
