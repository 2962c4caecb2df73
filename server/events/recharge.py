"""Auto-recharge: rules, the payment worker, and the payment's outcome.

The attempt is recorded by the balance trigger (migration 0007) in the transaction of the
change that took the available balance below the rule's threshold, under the account's
lock: at most one open attempt per account (a unique index as well), only when the
month's committed amount plus the price stays within the monthly limit, never while the
rule is backing off after a failure.

The worker claims a due attempt (``FOR UPDATE SKIP LOCKED``, so replicas never pay one
attempt at once) and creates an off-session PaymentIntent with the idempotency key
``creditwallet-auto-recharge-<attempt>``: if the process dies after Stripe charged but
before the attempt was marked, the next try sends the same key and Stripe answers with the
same PaymentIntent instead of charging again. Credits are granted only when
``payment_intent.succeeded`` arrives (``record_payment``), as a purchase keyed by the
intent, so they are granted once whatever the order of the webhook and the worker's own
bookkeeping. A declined payment fails the attempt (``auto_recharge.failed``), backs the
rule off, and turns it off after the configured number of failures in a row.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import uuid
from typing import Any

import aiohttp
import asyncpg
import stripe
from creditwallet.core import limits
from creditwallet.core.settings import Secret
from creditwallet.server import errors
from creditwallet.server.clock import Clock
from creditwallet.server.db import Connection
from creditwallet.server.events import metrics
from creditwallet.server.ledger import accounts, purchases

log = logging.getLogger(__name__)

IDEMPOTENCY_PREFIX = "creditwallet-auto-recharge-"
METADATA_ATTEMPT = "creditwallet_attempt_id"
METADATA_USER = "creditwallet_user_id"

_RULE_COLUMNS = """user_id, enabled, threshold_micros, price_id, credits_micros, amount_minor,
    currency, customer_id, payment_method_id, monthly_limit_minor, consecutive_failures,
    retry_after, disabled_reason"""

_UPSERT_RULE = f"""
INSERT INTO auto_recharge_rules (user_id, enabled, threshold_micros, price_id, credits_micros,
    amount_minor, currency, customer_id, payment_method_id, monthly_limit_minor,
    consecutive_failures, retry_after, disabled_reason, updated_at)
VALUES ($1, true, $2, $3, $4, $5, $6, $7, $8, $9, 0, NULL, NULL, $10)
ON CONFLICT (user_id) DO UPDATE SET enabled = true, threshold_micros = EXCLUDED.threshold_micros,
    price_id = EXCLUDED.price_id, credits_micros = EXCLUDED.credits_micros,
    amount_minor = EXCLUDED.amount_minor, currency = EXCLUDED.currency,
    customer_id = EXCLUDED.customer_id, payment_method_id = EXCLUDED.payment_method_id,
    monthly_limit_minor = EXCLUDED.monthly_limit_minor, consecutive_failures = 0,
    retry_after = NULL, disabled_reason = NULL, updated_at = EXCLUDED.updated_at
RETURNING {_RULE_COLUMNS}
"""

_DISABLE_RULE = f"""
UPDATE auto_recharge_rules SET enabled = false, disabled_reason = NULL, updated_at = $2
WHERE user_id = $1 RETURNING {_RULE_COLUMNS}
"""

_CUSTOMER = """
SELECT customer_id FROM billing_customers WHERE user_id = $1 ORDER BY created_at DESC LIMIT 1
"""

_CLAIM = """
SELECT attempt_id, user_id, price_id, credits_micros, amount_minor, currency, customer_id,
       payment_method_id, tries
FROM auto_recharge_attempts
WHERE status = 'pending' AND next_try_at <= $1
ORDER BY next_try_at LIMIT 1 FOR UPDATE SKIP LOCKED
"""

_SUBMITTED = """
UPDATE auto_recharge_attempts SET status = 'submitted', payment_intent_id = $2,
    tries = tries + 1, updated_at = $3
WHERE attempt_id = $1
"""

_RETRY = """
UPDATE auto_recharge_attempts SET tries = tries + 1, next_try_at = $2, failure_message = $3,
    updated_at = $4
WHERE attempt_id = $1
"""

_FAIL = """
UPDATE auto_recharge_attempts SET status = 'failed', tries = tries + $5,
    payment_intent_id = coalesce(payment_intent_id, $2), failure_code = $3,
    failure_message = $4, updated_at = $6
WHERE attempt_id = $1
"""

# Back off after a failed payment; turn the rule off after too many in a row.
_RULE_FAILED = """
UPDATE auto_recharge_rules SET consecutive_failures = consecutive_failures + 1,
    retry_after = $2::timestamptz + make_interval(secs => $3 * 2 ^ consecutive_failures),
    enabled = enabled AND consecutive_failures + 1 < $4,
    disabled_reason = CASE WHEN consecutive_failures + 1 >= $4 THEN 'failures'
                           ELSE disabled_reason END,
    updated_at = $2
WHERE user_id = $1
"""

_RULE_SUCCEEDED = """
UPDATE auto_recharge_rules SET consecutive_failures = 0, retry_after = NULL, updated_at = $2
WHERE user_id = $1 AND (consecutive_failures > 0 OR retry_after IS NOT NULL)
"""

_ATTEMPT = """
SELECT attempt_id, user_id, status, price_id, credits_micros, amount_minor, currency,
       customer_id, payment_intent_id, transaction_id
FROM auto_recharge_attempts WHERE attempt_id = $1 FOR UPDATE
"""

_SUCCEEDED = """
UPDATE auto_recharge_attempts SET status = 'succeeded', payment_intent_id = $2,
    transaction_id = $3, failure_code = NULL, failure_message = NULL, updated_at = $4
WHERE attempt_id = $1
"""


@dataclasses.dataclass(frozen=True)
class PriceTerms:
    price_id: str
    credits_micros: int
    amount_minor: int
    currency: str


@dataclasses.dataclass(frozen=True)
class PaymentOutcome:
    transaction_id: int | None
    granted_micros: int
    already_recorded: bool


class StripePayments:
    """The Stripe calls of auto-recharge, with the ``stripe`` library's async client."""

    def __init__(self, key: Secret, api_base: str | None) -> None:
        self._http = stripe.AIOHTTPClient(
            timeout=aiohttp.ClientTimeout(total=limits.AUTO_RECHARGE_STRIPE_TIMEOUT_SECONDS)
        )
        self._client = stripe.StripeClient(
            key.value,
            base_addresses={"api": api_base} if api_base else None,
            http_client=self._http,
            max_network_retries=0,
        )

    async def close(self) -> None:
        await self._http.close_async()  # type: ignore[no-untyped-call]

    async def price_terms(self, price_id: str) -> PriceTerms:
        price = await self._call(
            lambda c: c.v1.prices.retrieve_async(price_id, params={"expand": ["product"]})
        )
        data = price.to_dict()
        if data.get("type") != "one_time" or not data.get("unit_amount"):
            raise errors.invalid("price_id", "price_id must be a one-off price with an amount")
        credits = _credits(data)
        if credits is None:
            raise errors.invalid("price_id", "the price (or its product) has no credits metadata")
        return PriceTerms(price_id, credits, int(data["unit_amount"]), str(data["currency"]))

    async def default_payment_method(self, customer_id: str) -> str | None:
        customer = (
            await self._call(lambda c: c.v1.customers.retrieve_async(customer_id))
        ).to_dict()
        method = (customer.get("invoice_settings") or {}).get("default_payment_method")
        if isinstance(method, dict):
            method = method.get("id")
        return str(method) if method else None

    async def charge(self, attempt: asyncpg.Record) -> dict[str, Any]:
        """Create and confirm the off-session PaymentIntent of an attempt (raises StripeError)."""
        attempt_id = str(attempt["attempt_id"])
        intent = await self._client.v1.payment_intents.create_async(
            params={
                "amount": attempt["amount_minor"],
                "currency": attempt["currency"],
                "customer": attempt["customer_id"],
                "payment_method": attempt["payment_method_id"],
                "off_session": True,
                "confirm": True,
                "description": "credit-wallet auto-recharge",
                "metadata": {
                    METADATA_ATTEMPT: attempt_id,
                    METADATA_USER: attempt["user_id"],
                    "price_id": attempt["price_id"],
                },
            },
            options={"idempotency_key": IDEMPOTENCY_PREFIX + attempt_id},
        )
        return dict(intent.to_dict())

    async def _call(self, call: Any) -> Any:
        try:
            return await call(self._client)
        except stripe.InvalidRequestError as exc:
            raise errors.precondition(
                "PAYMENT_PROVIDER_REFUSED", f"the payment provider refused: {exc.user_message}"
            ) from None
        except (stripe.StripeError, aiohttp.ClientError, TimeoutError) as exc:
            log.warning("stripe unavailable: %s", type(exc).__name__)
            raise errors.LedgerError(
                "PAYMENT_PROVIDER_UNAVAILABLE", "the payment provider did not answer; retry"
            ) from None


def _credits(price: dict[str, Any]) -> int | None:
    """Whole credits from the price's metadata, else its product's (as the gateway reads them)."""
    for metadata in (price.get("metadata"), (price.get("product") or {}).get("metadata")):
        value = (metadata or {}).get("credits") if isinstance(metadata, dict) else None
        if isinstance(value, str) and value.isascii() and value.isdigit() and int(value) > 0:
            micros = int(value) * limits.MICROS_PER_CREDIT
            return micros if micros <= limits.AMOUNT_MICROS_MAX else None
    return None


async def customer_of(conn: Connection, user_id: str) -> str | None:
    value = await conn.fetchval(_CUSTOMER, user_id)
    return str(value) if value is not None else None


async def set_rule(
    conn: Connection,
    user_id: str,
    threshold_micros: int,
    terms: PriceTerms,
    customer_id: str,
    payment_method_id: str,
    monthly_limit_minor: int,
    clock: Clock,
) -> asyncpg.Record:
    now = (await accounts.lock(conn, user_id, clock)).now
    row = await conn.fetchrow(
        _UPSERT_RULE,
        user_id,
        threshold_micros,
        terms.price_id,
        terms.credits_micros,
        terms.amount_minor,
        terms.currency,
        customer_id,
        payment_method_id,
        monthly_limit_minor,
        now,
    )
    assert row is not None
    return row


async def disable_rule(conn: Connection, user_id: str, clock: Clock) -> asyncpg.Record | None:
    locked = await accounts.lock(conn, user_id, clock)
    return await conn.fetchrow(_DISABLE_RULE, user_id, locked.now)


async def pay_one(
    conn: Connection, payments: StripePayments, now: dt.datetime, failures_max: int
) -> bool:
    """Claim one due attempt and ask Stripe to pay it, in the caller's transaction."""
    attempt = await conn.fetchrow(_CLAIM, now)
    if attempt is None:
        return False
    attempt_id = attempt["attempt_id"]
    try:
        intent = await payments.charge(attempt)
    except stripe.CardError as exc:
        error = exc.error
        intent_id = getattr(getattr(error, "payment_intent", None), "id", None)
        code = getattr(error, "decline_code", None) or exc.code or "card_declined"
        await _failed(conn, attempt, intent_id, code, exc.user_message or "", now, failures_max)
        return True
    except (stripe.APIConnectionError, stripe.RateLimitError, TimeoutError, aiohttp.ClientError):
        await _retry_later(conn, attempt, "the payment provider did not answer", now, failures_max)
        return True
    except stripe.StripeError as exc:
        if exc.http_status is not None and exc.http_status >= 500:
            await _retry_later(conn, attempt, "the payment provider failed", now, failures_max)
            return True
        await _failed(
            conn, attempt, None, exc.code or "refused", exc.user_message or "", now, failures_max
        )
        return True
    status = intent.get("status")
    if status in ("succeeded", "processing"):
        await conn.execute(_SUBMITTED, attempt_id, intent["id"], now)
        metrics.RECHARGE_ATTEMPTS.labels("submitted").inc()
        return True
    await _failed(
        conn,
        attempt,
        intent.get("id"),
        str(status),
        "the payment needs the customer",
        now,
        failures_max,
    )
    return True


async def _retry_later(
    conn: Connection, attempt: asyncpg.Record, why: str, now: dt.datetime, failures_max: int
) -> None:
    tries = attempt["tries"] + 1
    if tries >= limits.AUTO_RECHARGE_TRIES_MAX:
        await _failed(conn, attempt, None, "provider_unavailable", why, now, failures_max)
        return
    delay = min(
        limits.AUTO_RECHARGE_RETRY_INITIAL_SECONDS * 2 ** (tries - 1),
        limits.AUTO_RECHARGE_RETRY_MAX_SECONDS,
    )
    await conn.execute(_RETRY, attempt["attempt_id"], now + dt.timedelta(seconds=delay), why, now)
    metrics.RECHARGE_ATTEMPTS.labels("retried").inc()


async def _failed(
    conn: Connection,
    attempt: asyncpg.Record,
    intent_id: str | None,
    code: str,
    message: str,
    now: dt.datetime,
    failures_max: int,
    *,
    tried: int = 1,
) -> None:
    await conn.execute(
        _FAIL, attempt["attempt_id"], intent_id, code[:100], message[:500], tried, now
    )
    await conn.execute(
        _RULE_FAILED,
        attempt["user_id"],
        now,
        limits.AUTO_RECHARGE_BACKOFF_INITIAL_SECONDS,
        failures_max,
    )
    metrics.RECHARGE_ATTEMPTS.labels("failed").inc()


async def record_payment(
    conn: Connection,
    *,
    request_id: str,
    attempt_id: uuid.UUID,
    user_id: str,
    intent_id: str,
    succeeded: bool,
    amount_received_minor: int,
    failure_code: str,
    failure_message: str,
    clock: Clock,
    failures_max: int,
) -> PaymentOutcome:
    """A payment_intent.succeeded (or .payment_failed) of an attempt, exactly once per intent."""
    now = clock.now()
    attempt = await conn.fetchrow(_ATTEMPT, attempt_id)
    if attempt is None or attempt["user_id"] != user_id:
        raise errors.not_found(
            "AUTO_RECHARGE_ATTEMPT_NOT_FOUND",
            "no auto-recharge attempt with that id for that user",
            attempt_id=str(attempt_id),
        )
    if attempt["status"] == "succeeded":
        return PaymentOutcome(attempt["transaction_id"], 0, already_recorded=True)
    if not succeeded:
        if attempt["status"] in ("pending", "submitted"):
            await _failed(
                conn,
                attempt,
                intent_id,
                failure_code or "payment_failed",
                failure_message,
                now,
                failures_max,
                tried=0,
            )
        return PaymentOutcome(None, 0, already_recorded=attempt["status"] == "failed")
    # Money was taken: the credits are owed even if the attempt had been given up.
    result = await purchases.record(
        conn,
        purchases.PurchaseCommand(
            request_id=request_id,
            user_id=user_id,
            purchase_id=intent_id,
            payment_id=intent_id,
            customer_id=attempt["customer_id"],
            price_id=attempt["price_id"],
            credits_micros=attempt["credits_micros"],
            amount_paid_minor=amount_received_minor or attempt["amount_minor"],
            currency=attempt["currency"],
        ),
        clock,
    )
    await conn.execute(_SUCCEEDED, attempt_id, intent_id, result.transaction_id, now)
    await conn.execute(_RULE_SUCCEEDED, user_id, now)
    return PaymentOutcome(result.transaction_id, result.granted_micros, result.already_recorded)
