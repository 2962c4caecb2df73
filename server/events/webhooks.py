"""Webhook delivery: at least once, in order per account, one sender per (endpoint, account).

Each (endpoint, account) pair is a *lane*. A delivery is one transaction that holds the
lane's advisory lock while it POSTs the lane's oldest pending event, then records the
answer: another worker or replica that looks at the same lane meanwhile skips it (the lock
is tried, never waited for), so one event is never sent twice at once, and a lane's next
event is only sent after the one before it was acknowledged or given up. If the process
dies mid-request, PostgreSQL ends its session: the lock goes with it, nothing was recorded,
and the event is sent again (receivers deduplicate by ``webhook-id``).

Signing follows the Standard Webhooks specification with its reference library: headers
``webhook-id`` (the event id, the same on every attempt), ``webhook-timestamp`` (the wall
clock at sending, which the receiver compares with its own) and ``webhook-signature``.
Retry times come from the ledger's clock: 10 s doubling to 6 h, for 3 days from the first
attempt; then the delivery is marked failed (``creditwallet events replay`` sends it again)
and the lane moves on. Each endpoint keeps a failure state (failures in a row, since when,
the last error).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Mapping

import aiohttp
import asyncpg
from creditwallet.core import limits
from creditwallet.server.clock import Clock
from creditwallet.server.db import Connection
from creditwallet.server.events import metrics, store
from creditwallet.server.events.settings import WebhookEndpointConfig
from standardwebhooks.webhooks import Webhook

log = logging.getLogger(__name__)

_SYNC_ENDPOINT = """
INSERT INTO webhook_endpoints (endpoint_id, url, types, active, updated_at)
VALUES ($1, $2, $3::text[], true, $4)
ON CONFLICT (endpoint_id) DO UPDATE SET url = EXCLUDED.url, types = EXCLUDED.types,
    active = true, updated_at = EXCLUDED.updated_at
"""

_CANDIDATES = """
SELECT endpoint_id, user_id FROM webhook_lanes
WHERE due_at <= $1 AND endpoint_id = ANY ($2::text[])
ORDER BY due_at LIMIT $3
"""

_TRY_LANE = """
SELECT pg_try_advisory_xact_lock(
    hashtextextended('webhook-lane:' || $1::text || ':' || $2::text, 0))
"""

_HEAD = f"""
SELECT d.attempts, d.first_attempt_at, d.next_attempt_at, {store.EVENT_COLUMNS}
FROM webhook_deliveries d JOIN events e ON e.user_id = d.user_id AND e.seq = d.seq
WHERE d.endpoint_id = $1 AND d.user_id = $2 AND d.status = 'pending'
ORDER BY d.seq LIMIT 1
"""

_DELIVERED = """
UPDATE webhook_deliveries SET status = 'delivered', attempts = attempts + 1,
    first_attempt_at = coalesce(first_attempt_at, $4), last_attempt_at = $4, last_status = $5,
    last_error = NULL, delivered_at = $4
WHERE endpoint_id = $1 AND user_id = $2 AND seq = $3
"""

_ATTEMPT_FAILED = """
UPDATE webhook_deliveries SET status = $6, attempts = attempts + 1,
    first_attempt_at = coalesce(first_attempt_at, $4), last_attempt_at = $4, last_status = $5,
    last_error = $7, next_attempt_at = $8
WHERE endpoint_id = $1 AND user_id = $2 AND seq = $3
"""

_ENDPOINT_OK = """
UPDATE webhook_endpoints SET consecutive_failures = 0, failing_since = NULL, last_error = NULL,
    last_success_at = $2, updated_at = $2
WHERE endpoint_id = $1
  AND (consecutive_failures > 0 OR last_success_at IS NULL
       OR last_success_at < $2::timestamptz - interval '1 second')
"""

_ENDPOINT_FAILED = """
UPDATE webhook_endpoints SET consecutive_failures = consecutive_failures + 1,
    failing_since = coalesce(failing_since, $2), last_error = $3, last_failure_at = $2,
    updated_at = $2
WHERE endpoint_id = $1
"""

_LOCK_LANE = "SELECT 1 FROM webhook_lanes WHERE endpoint_id = $1 AND user_id = $2 FOR UPDATE"

# A new statement after the lane's row lock: it sees every delivery that a sequencer pass
# committed before the lock, and a pass that commits later waits for this transaction and
# then finds due_at NULL and sets it (sequencer.py), so no pending delivery is left unseen.
_RESCHEDULE_LANE = """
UPDATE webhook_lanes SET due_at = (
    SELECT d.next_attempt_at FROM webhook_deliveries d
    WHERE d.endpoint_id = $1 AND d.user_id = $2 AND d.status = 'pending'
    ORDER BY d.seq LIMIT 1)
WHERE endpoint_id = $1 AND user_id = $2
"""


@dataclasses.dataclass(frozen=True)
class Outcome:
    ok: bool
    status: int
    error: str


def retry_delay(attempts: int) -> dt.timedelta:
    """The wait after the ``attempts``-th failed attempt (1-based)."""
    seconds = limits.WEBHOOK_RETRY_INITIAL_SECONDS * 2 ** min(attempts - 1, 32)
    return dt.timedelta(seconds=min(seconds, limits.WEBHOOK_RETRY_MAX_SECONDS))


def sign(secret: str, event_id: str, at: dt.datetime, body: str) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt."""
    signature = Webhook(secret).sign(msg_id=event_id, timestamp=at, data=body)
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
    }


async def sync_endpoints(
    conn: Connection, endpoints: tuple[WebhookEndpointConfig, ...], now: dt.datetime
) -> None:
    """Record the configured endpoints; endpoints no longer configured stop getting events."""
    for endpoint in endpoints:
        await conn.execute(_SYNC_ENDPOINT, endpoint.endpoint_id, endpoint.url, endpoint.types, now)
    await conn.execute(
        "UPDATE webhook_endpoints SET active = false, updated_at = $2 "
        "WHERE active AND NOT (endpoint_id = ANY ($1::text[]))",
        [e.endpoint_id for e in endpoints],
        now,
    )


class Deliverer:
    """Sends one lane's next event per ``deliver_one`` call."""

    def __init__(
        self,
        endpoints: tuple[WebhookEndpointConfig, ...],
        clock: Clock,
        http: aiohttp.ClientSession,
        wall_clock: Clock,
    ) -> None:
        self._endpoints: Mapping[str, WebhookEndpointConfig] = {e.endpoint_id: e for e in endpoints}
        self._clock = clock
        self._wall = wall_clock
        self._http = http

    async def deliver_one(self, conn: Connection) -> bool:
        """In the caller's transaction: True when a lane was worked on (look again soon)."""
        if not self._endpoints:
            return False
        now = self._clock.now()
        candidates = await conn.fetch(
            _CANDIDATES, now, list(self._endpoints), limits.WEBHOOK_CLAIM_CANDIDATES_MAX
        )
        for lane in candidates:
            endpoint_id, user_id = lane["endpoint_id"], lane["user_id"]
            if await conn.fetchval(_TRY_LANE, endpoint_id, user_id):
                await self._work(conn, self._endpoints[endpoint_id], user_id, now)
                return True
        return False

    async def _work(
        self, conn: Connection, endpoint: WebhookEndpointConfig, user_id: str, now: dt.datetime
    ) -> None:
        head = await conn.fetchrow(_HEAD, endpoint.endpoint_id, user_id)
        if head is not None and head["next_attempt_at"] <= now:
            outcome = await self._post(endpoint, head)
            now = self._clock.now()
            await self._record(conn, endpoint, head, outcome, now)
        await conn.execute(_LOCK_LANE, endpoint.endpoint_id, user_id)
        await conn.execute(_RESCHEDULE_LANE, endpoint.endpoint_id, user_id)

    async def _post(self, endpoint: WebhookEndpointConfig, head: asyncpg.Record) -> Outcome:
        body = store.payload(head)
        headers = sign(endpoint.secret.value, head["event_id"], self._wall.now(), body)
        try:
            async with self._http.post(
                endpoint.url,
                data=body.encode(),
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=limits.WEBHOOK_TIMEOUT_SECONDS),
            ) as response:
                if 200 <= response.status < 300:
                    return Outcome(True, response.status, "")
                text = await response.content.read(limits.WEBHOOK_RESPONSE_BYTES_MAX)
                return Outcome(
                    False,
                    response.status,
                    f"HTTP {response.status}: {text.decode('utf-8', 'replace')[:200]}",
                )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return Outcome(False, 0, type(exc).__name__)

    async def _record(
        self,
        conn: Connection,
        endpoint: WebhookEndpointConfig,
        head: asyncpg.Record,
        outcome: Outcome,
        now: dt.datetime,
    ) -> None:
        key = (endpoint.endpoint_id, head["user_id"], head["seq"])
        if outcome.ok:
            await conn.execute(_DELIVERED, *key, now, outcome.status)
            await conn.execute(_ENDPOINT_OK, endpoint.endpoint_id, now)
            metrics.DELIVERIES.labels(endpoint.endpoint_id, head["type"], "delivered").inc()
            lag = (now - head["occurred_at"]).total_seconds()
            metrics.DELIVERY_LAG_SECONDS.labels(endpoint.endpoint_id).observe(max(lag, 0.0))
            return
        attempts = head["attempts"] + 1
        first = head["first_attempt_at"] or now
        given_up = now - first >= dt.timedelta(seconds=limits.WEBHOOK_RETRY_WINDOW_SECONDS)
        status = "failed" if given_up else "pending"
        next_at = now if given_up else now + retry_delay(attempts)
        await conn.execute(
            _ATTEMPT_FAILED, *key, now, outcome.status, status, outcome.error[:500], next_at
        )
        await conn.execute(_ENDPOINT_FAILED, endpoint.endpoint_id, now, outcome.error[:500])
        metrics.DELIVERIES.labels(
            endpoint.endpoint_id, head["type"], "failed" if given_up else "retried"
        ).inc()
        log.warning(
            "webhook delivery failed",
            extra={
                "endpoint": endpoint.endpoint_id,
                "event_id": head["event_id"],
                "attempts": attempts,
                "error": outcome.error[:200],
                "given_up": given_up,
            },
        )
