"""The events' RPCs, as mixins of the three servicers: validate -> one query -> convert.

WalletService.StreamEvents; AdminService.SetBalanceAlert, SetAutoRecharge, ListEvents,
ReplayEvents, ListWebhookEndpoints; BillingService.RecordAutoRechargePayment.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import asyncpg
import grpc
from creditwallet.core import limits
from creditwallet.server import convert, errors, page_tokens, validate
from creditwallet.server.clock import Clock
from creditwallet.server.db import Connection
from creditwallet.server.events import recharge, store
from creditwallet.server.ledger import accounts, idempotency
from creditwallet.server.services import guard
from creditwallet.v1 import events_pb2 as epb

if TYPE_CHECKING:
    from creditwallet.server.events.workers import EventWorkers
    from creditwallet.server.services import Runtime

Context = grpc.aio.ServicerContext[Any, Any]

_SET_ALERT = """
INSERT INTO balance_alerts (user_id, threshold_micros, updated_at) VALUES ($1, $2, $3)
ON CONFLICT (user_id) DO UPDATE SET threshold_micros = EXCLUDED.threshold_micros,
    updated_at = EXCLUDED.updated_at
"""

_LIST_FOR_USER = f"""
SELECT {store.EVENT_COLUMNS}, d.status AS d_status, d.attempts AS d_attempts,
       d.last_status AS d_last_status, d.last_error AS d_last_error,
       d.next_attempt_at AS d_next_attempt_at
FROM events e
LEFT JOIN webhook_deliveries d ON d.endpoint_id = $4 AND d.user_id = e.user_id AND d.seq = e.seq
WHERE e.user_id = $1 AND e.seq < $2
  AND (cardinality($3::text[]) = 0 OR e.type = ANY ($3::text[]))
  AND ($4::text IS NULL OR d.endpoint_id IS NOT NULL)
  AND ($5::text IS NULL OR d.status = $5)
ORDER BY e.seq DESC LIMIT $6
"""

_LIST_ALL = f"""
SELECT {store.EVENT_COLUMNS}, d.status AS d_status, d.attempts AS d_attempts,
       d.last_status AS d_last_status, d.last_error AS d_last_error,
       d.next_attempt_at AS d_next_attempt_at
FROM events e
LEFT JOIN webhook_deliveries d ON d.endpoint_id = $4 AND d.user_id = e.user_id AND d.seq = e.seq
WHERE e.position < $2 AND ($1::text IS NULL OR true)
  AND (cardinality($3::text[]) = 0 OR e.type = ANY ($3::text[]))
  AND ($4::text IS NULL OR d.endpoint_id IS NOT NULL)
  AND ($5::text IS NULL OR d.status = $5)
ORDER BY e.position DESC LIMIT $6
"""

_ENDPOINT_ACTIVE = "SELECT active FROM webhook_endpoints WHERE endpoint_id = $1"

_REPLAY = """
WITH chosen AS (
    SELECT e.user_id, e.seq FROM events e WHERE e.event_id = ANY ($2::text[])
    UNION
    SELECT d.user_id, d.seq FROM webhook_deliveries d
    WHERE $3 AND d.endpoint_id = $1 AND d.status = 'failed' AND ($4::text IS NULL OR d.user_id = $4)
    UNION
    SELECT e.user_id, e.seq FROM events e WHERE $5::bigint > 0 AND e.user_id = $4 AND e.seq >= $5
), queued AS (
    INSERT INTO webhook_deliveries AS d (endpoint_id, user_id, seq, status, next_attempt_at)
    SELECT $1, user_id, seq, 'pending', $6 FROM chosen ORDER BY user_id, seq
    ON CONFLICT (endpoint_id, user_id, seq) DO UPDATE SET status = 'pending',
        next_attempt_at = EXCLUDED.next_attempt_at, first_attempt_at = NULL, last_error = NULL,
        delivered_at = NULL
    RETURNING d.user_id
), lanes AS (
    INSERT INTO webhook_lanes AS l (endpoint_id, user_id, due_at)
    SELECT DISTINCT $1, user_id, $6::timestamptz FROM queued
    ON CONFLICT (endpoint_id, user_id) DO UPDATE SET due_at = EXCLUDED.due_at
)
SELECT count(*) FROM queued
"""

_ENDPOINTS = """
SELECT p.*,
  (SELECT count(*) FROM webhook_deliveries d
   WHERE d.endpoint_id = p.endpoint_id AND d.status = 'pending') AS pending,
  (SELECT count(*) FROM webhook_deliveries d
   WHERE d.endpoint_id = p.endpoint_id AND d.status = 'failed') AS failed
FROM webhook_endpoints p WHERE p.endpoint_id > $1 ORDER BY p.endpoint_id LIMIT $2
"""

DELIVERY_STATUSES = ("pending", "delivered", "failed")
# The idempotency scope of operators' replays (they belong to an endpoint, not an account).
EVENTS_SCOPE = "~events"


@dataclasses.dataclass(frozen=True)
class Replayed:
    queued: int


def _events(runtime: Runtime) -> EventWorkers:
    if runtime.events is None:
        raise errors.unavailable("events are not running on this server")
    return runtime.events


class WalletEvents:
    rt: Runtime

    async def StreamEvents(self, request: Any, context: Context) -> AsyncIterator[Any]:
        after = store.parse_cursor(request.after_cursor)
        types = store.parse_types(request.types)
        user_id = store.optional_user(request.user_id)
        async for row in _events(self.rt).streams.follow(after, user_id, types):
            yield epb.StreamEventsResponse(event=store.event_message(row))


class AdminEvents:
    rt: Runtime

    async def SetBalanceAlert(self, request: Any, context: Context) -> Any:
        user_id = validate.user_id(request.user_id)
        threshold = request.threshold_micros
        if not 0 <= threshold <= limits.AMOUNT_MICROS_MAX:
            raise errors.invalid(
                "threshold_micros", f"threshold_micros must be 0 to {limits.AMOUNT_MICROS_MAX}"
            )

        async def work(conn: Connection, clock: Clock) -> None:
            locked = await accounts.lock(conn, user_id, clock)
            await conn.execute(_SET_ALERT, user_id, threshold, locked.now)

        await self.rt.write(work)
        return epb.SetBalanceAlertResponse(user_id=user_id, threshold_micros=threshold)

    async def SetAutoRecharge(self, request: Any, context: Context) -> Any:
        user_id = validate.user_id(request.user_id)
        if not request.enabled:
            row = await self.rt.write(
                lambda conn, clock: recharge.disable_rule(conn, user_id, clock)
            )
            rule = _rule(row) if row is not None else epb.AutoRechargeRule(user_id=user_id)
            return epb.SetAutoRechargeResponse(rule=rule)
        threshold = validate.amount(request.threshold_micros, "threshold_micros")
        price_id = validate.identifier(request.price_id, "price_id", limits.PROVIDER_ID_LENGTH_MAX)
        limit = request.monthly_limit_cents
        if not 0 < limit <= limits.AUTO_RECHARGE_MONTHLY_LIMIT_CENTS_MAX:
            raise errors.invalid(
                "monthly_limit_cents",
                f"monthly_limit_cents must be 1 to {limits.AUTO_RECHARGE_MONTHLY_LIMIT_CENTS_MAX}",
            )
        payments = _events(self.rt).payments
        if payments is None:
            raise errors.precondition(
                "AUTO_RECHARGE_NOT_CONFIGURED", "the server has no payment provider key"
            )

        async def customer(conn: Connection, clock: Clock) -> str | None:
            await accounts.read(conn, user_id)
            return await recharge.customer_of(conn, user_id)

        customer_id = await self.rt.read(customer)
        if customer_id is None:
            raise errors.precondition(
                "NO_PAYMENT_CUSTOMER", "the account has no payment customer yet (no purchase)"
            )
        terms = await payments.price_terms(price_id)
        method = await payments.default_payment_method(customer_id)
        if method is None:
            raise errors.precondition(
                "NO_DEFAULT_PAYMENT_METHOD",
                "the account's payment customer has no default payment method",
            )
        if limit < terms.amount_minor:
            raise errors.invalid(
                "monthly_limit_cents",
                f"monthly_limit_cents is below the price's amount of {terms.amount_minor}",
            )
        row = await self.rt.write(
            lambda conn, clock: recharge.set_rule(
                conn, user_id, threshold, terms, customer_id, method, limit, clock
            )
        )
        return epb.SetAutoRechargeResponse(rule=_rule(row))

    async def ListEvents(self, request: Any, context: Context) -> Any:
        user_id = store.optional_user(request.user_id)
        types = store.parse_types(request.types)
        endpoint = (
            validate.identifier(request.endpoint_id, "endpoint_id", 64)
            if request.endpoint_id
            else None
        )
        status = request.delivery_status or None
        if status is not None and (endpoint is None or status not in DELIVERY_STATUSES):
            raise errors.invalid(
                "delivery_status",
                "delivery_status needs endpoint_id and is one of " + ", ".join(DELIVERY_STATUSES),
            )
        size = validate.page_size(request.page_size, limits.PAGE_SIZE_DEFAULT)
        scope = f"{user_id or ''}|{','.join(types)}|{endpoint or ''}|{status or ''}"
        before = (
            store.decode_page_token(request.page_token, scope)
            if request.page_token
            else limits.INT64_MAX
        )
        sql = _LIST_FOR_USER if user_id is not None else _LIST_ALL
        rows = await self.rt.read(
            lambda conn, clock: conn.fetch(sql, user_id, before, types, endpoint, status, size + 1)
        )
        listed = [_listed(r, endpoint) for r in rows[:size]]
        kept = page_tokens.fitting(listed)
        token = ""
        if len(rows) > kept:
            last = rows[kept - 1]
            token = store.encode_page_token(
                scope, last["seq"] if user_id is not None else last["position"]
            )
        return epb.ListEventsResponse(events=listed[:kept], next_page_token=token)

    async def ReplayEvents(self, request: Any, context: Context) -> Any:
        request_id = validate.request_id(request.request_id)
        endpoint = validate.identifier(request.endpoint_id, "endpoint_id", 64)
        event_ids = list(request.event_ids)
        if len(event_ids) > limits.PAGE_SIZE_MAX or any(
            len(e) > limits.REQUEST_ID_LENGTH_MAX for e in event_ids
        ):
            raise errors.invalid("event_ids", f"at most {limits.PAGE_SIZE_MAX} event ids")
        user_id = store.optional_user(request.user_id)
        from_sequence = request.from_sequence
        if from_sequence < 0 or (from_sequence > 0 and user_id is None):
            raise errors.invalid("from_sequence", "from_sequence needs user_id and is positive")
        if not event_ids and not request.failed_only and from_sequence == 0:
            raise errors.invalid(
                "event_ids", "give event_ids, failed_only, or user_id with from_sequence"
            )

        async def work(conn: Connection, clock: Clock) -> Replayed:
            active = await conn.fetchval(_ENDPOINT_ACTIVE, endpoint)
            if not active:
                raise errors.not_found(
                    "ENDPOINT_NOT_FOUND", "no configured webhook endpoint", endpoint_id=endpoint
                )
            queued = await conn.fetchval(
                _REPLAY,
                endpoint,
                event_ids,
                request.failed_only,
                user_id,
                from_sequence,
                clock.now(),
            )
            return Replayed(int(queued or 0))

        outcome = await self.rt.execute(
            guard(EVENTS_SCOPE, request_id, "ReplayEvents", request), Replayed, work
        )
        return epb.ReplayEventsResponse(queued=outcome.result.queued, replayed=outcome.replayed)

    async def ListWebhookEndpoints(self, request: Any, context: Context) -> Any:
        size = validate.page_size(request.page_size, limits.PRICES_PAGE_SIZE_DEFAULT)
        after = (
            validate.identifier(request.page_token, "page_token", 64) if request.page_token else ""
        )
        rows = await self.rt.read(lambda conn, clock: conn.fetch(_ENDPOINTS, after, size + 1))
        token = rows[size - 1]["endpoint_id"] if len(rows) > size else ""
        return epb.ListWebhookEndpointsResponse(
            endpoints=[_endpoint(r) for r in rows[:size]], next_page_token=token
        )


class BillingEvents:
    rt: Runtime

    async def RecordAutoRechargePayment(self, request: Any, context: Context) -> Any:
        request_id = validate.request_id(request.request_id)
        intent_id = validate.identifier(
            request.payment_intent_id, "payment_intent_id", limits.PROVIDER_ID_LENGTH_MAX
        )
        try:
            attempt_id = uuid.UUID(request.attempt_id[: limits.HOLD_ID_LENGTH_MAX])
        except ValueError:
            raise errors.invalid("attempt_id", "attempt_id is malformed") from None
        user_id = validate.user_id(request.user_id)
        received = request.amount_received_minor
        if not 0 <= received <= limits.AMOUNT_MICROS_MAX:
            raise errors.invalid("amount_received_minor", "amount_received_minor out of range")
        code = validate.text(request.failure_code, "failure_code", 100)
        message = validate.text(request.failure_message, "failure_message", 500)
        failures_max = _events(self.rt).config.auto_recharge_failures_max

        async def work(conn: Connection, clock: Clock) -> recharge.PaymentOutcome:
            return await recharge.record_payment(
                conn,
                request_id=request_id,
                attempt_id=attempt_id,
                user_id=user_id,
                intent_id=intent_id,
                succeeded=request.succeeded,
                amount_received_minor=received,
                failure_code=code,
                failure_message=message,
                clock=clock,
                failures_max=failures_max,
            )

        outcome = await self.rt.execute(
            guard(idempotency.BILLING_SCOPE, request_id, "RecordAutoRechargePayment", request),
            recharge.PaymentOutcome,
            work,
        )
        result = outcome.result
        return epb.RecordAutoRechargePaymentResponse(
            transaction_id=str(result.transaction_id) if result.transaction_id else "",
            granted_micros=result.granted_micros,
            already_recorded=result.already_recorded,
            replayed=outcome.replayed,
        )


def _rule(row: asyncpg.Record) -> epb.AutoRechargeRule:
    return epb.AutoRechargeRule(
        user_id=row["user_id"],
        enabled=row["enabled"],
        threshold_micros=row["threshold_micros"],
        price_id=row["price_id"],
        credits_micros=row["credits_micros"],
        amount_cents=row["amount_minor"],
        currency=row["currency"],
        monthly_limit_cents=row["monthly_limit_minor"],
        consecutive_failures=row["consecutive_failures"],
        disabled_reason=row["disabled_reason"] or "",
    )


def _listed(row: asyncpg.Record, endpoint: str | None) -> epb.Event:
    event = store.event_message(row)
    if endpoint is not None and row["d_status"] is not None:
        event.deliveries.append(
            epb.EventDelivery(
                endpoint_id=endpoint,
                status=row["d_status"],
                attempts=row["d_attempts"],
                last_status=row["d_last_status"] or 0,
                last_error=row["d_last_error"] or "",
                next_attempt_at=convert.timestamp(row["d_next_attempt_at"])
                if row["d_status"] == "pending"
                else None,
            )
        )
    return event


def _endpoint(row: asyncpg.Record) -> epb.WebhookEndpoint:
    return epb.WebhookEndpoint(
        endpoint_id=row["endpoint_id"],
        url=row["url"],
        types=list(row["types"]),
        active=row["active"],
        consecutive_failures=row["consecutive_failures"],
        failing_since=convert.timestamp(row["failing_since"]),
        last_error=row["last_error"] or "",
        last_success_at=convert.timestamp(row["last_success_at"]),
        pending_deliveries=row["pending"],
        failed_deliveries=row["failed"],
    )
