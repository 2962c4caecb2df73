"""What the events tests share: a server with events settings, a receiving webhook server.

The receiver is a real aiohttp server on 127.0.0.1 that checks every delivery with the
Standard Webhooks reference verifier (the ``standardwebhooks`` package's ``Webhook.verify``),
records it, and can be taken down (503) or made slow. Background work (sequencer,
deliveries) is awaited with ``wait_for``: a bounded poll of an observable condition, never a
sleep that stands in for time passing; time in the ledger moves only by the ManualClock.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import json
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web
from creditwallet.core.settings import Secret
from creditwallet.server import app
from creditwallet.server.clock import ManualClock
from creditwallet.server.events.settings import EventsConfig, WebhookEndpointConfig
from creditwallet.v1 import events_pb2 as epb
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests import harness

POLL_SECONDS = 0.02
WAIT_SECONDS = 30.0


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def endpoint(
    endpoint_id: str, url: str, secret: str, types: tuple[str, ...] = ()
) -> WebhookEndpointConfig:
    return WebhookEndpointConfig(endpoint_id, url, Secret(secret), types)


async def start(
    base_dsn: str,
    data_dir: Path,
    *,
    dsn: str | None = None,
    clock: ManualClock | None = None,
    **events: Any,
) -> harness.Ledger:
    """A server on a fresh database (or ``dsn``) whose events loops poll every 20 ms."""
    dsn = dsn or await harness.fresh_database(base_dsn)
    clock = clock or ManualClock(harness.real_now())
    events.setdefault("poll_seconds", POLL_SECONDS)
    config = dataclasses.replace(harness.config(data_dir), events=EventsConfig(**events))
    running = await app.start(config, dsn=dsn, clock=clock, address="127.0.0.1:0")
    return harness.Ledger(dsn, running, clock)


async def wait_for(
    condition: Callable[[], Awaitable[bool]], what: str, timeout: float = WAIT_SECONDS
) -> None:
    async with asyncio.timeout(timeout):
        while not await condition():
            await asyncio.sleep(POLL_SECONDS)
    assert await condition(), what


# Each step moves the ledger's clock past the longest retry delay (6 h): one more attempt.
_RETRY_STEP_HOURS = 6
_RETRY_STEPS_MAX = 60


async def give_up(
    ledger: harness.Ledger, receiver: Receiver, endpoint_id: str, user: str, count: int
) -> None:
    """Until the endpoint has given up on ``count`` of the account's events: the receiver is
    down, and the clock moves on one retry at a time past the retry window (3 days)."""
    admin = ledger.client("admin")
    failed = epb.ListEventsRequest(user_id=user, endpoint_id=endpoint_id, delivery_status="failed")

    async def tried(attempts: int) -> bool:
        return len(receiver.deliveries) >= attempts

    async def given_up() -> bool:
        return len((await admin.admin.ListEvents(failed)).events) == count

    async def retried_or_given_up(attempts: int) -> bool:
        # The receiver sees an attempt before the ledger records its outcome, so the last
        # attempts may be given up only after the check above: then no retry comes.
        return await tried(attempts + 1) or await given_up()

    await wait_for(lambda: tried(1), "the first attempt")
    for _ in range(_RETRY_STEPS_MAX):
        if await given_up():
            break
        attempts = len(receiver.deliveries)
        ledger.clock.advance(hours=_RETRY_STEP_HOURS)
        await wait_for(functools.partial(retried_or_given_up, attempts), "a retry when due")
    await wait_for(given_up, f"{count} events given up after 3 days")


async def events_of(dsn: str, user_id: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT user_id, seq, event_id, type, occurred_at, body::text AS body, position "
            "FROM events WHERE user_id = $1 ORDER BY seq",
            user_id,
        )
    finally:
        await conn.close()
    return [{**dict(r), "body": json.loads(r["body"])} for r in rows]


async def sequenced(dsn: str) -> bool:
    """True once every committed event has its stream position."""
    conn = await asyncpg.connect(dsn)
    try:
        return bool(await conn.fetchval("SELECT count(*) = 0 FROM events WHERE position IS NULL"))
    finally:
        await conn.close()


@dataclasses.dataclass
class Delivery:
    webhook_id: str
    body: dict[str, Any]
    status: int


class Receiver:
    """A webhook receiver: verifies, records, deduplicates by webhook-id (as receivers must)."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.up = True
        self.delay_seconds = 0.0
        self.deliveries: list[Delivery] = []
        self.bad_signatures = 0
        self.in_flight: set[str] = set()
        self.overlaps: list[str] = []
        self.hold: asyncio.Event | None = None
        self.held = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> Receiver:
        application = web.Application()
        application.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(application)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/hook"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _hook(self, request: web.Request) -> web.Response:
        raw = await request.read()
        headers = {k: v for k, v in request.headers.items()}
        try:
            body = Webhook(self.secret).verify(raw, headers)
        except WebhookVerificationError:
            self.bad_signatures += 1
            return web.Response(status=400)
        webhook_id = headers["webhook-id"]
        if webhook_id in self.in_flight:
            self.overlaps.append(webhook_id)
        self.in_flight.add(webhook_id)
        try:
            if self.hold is not None:
                self.held.set()
                await self.hold.wait()
            if self.delay_seconds:
                await asyncio.sleep(self.delay_seconds)
            status = 200 if self.up else 503
            self.deliveries.append(Delivery(webhook_id, body, status))
            return web.Response(status=status)
        finally:
            self.in_flight.discard(webhook_id)

    def acknowledged(self) -> list[Delivery]:
        return [d for d in self.deliveries if d.status == 200]

    def unique(self) -> dict[str, Delivery]:
        """First acknowledged delivery per webhook-id."""
        seen: dict[str, Delivery] = {}
        for d in self.acknowledged():
            seen.setdefault(d.webhook_id, d)
        return seen
