"""Webhooks that lie about money, and clients that hold the gateway's sockets.

Each delivery is signed as Stripe signs it (the signing secret is not the defence here: these
are events a compromised or misconfigured Stripe account, or a replayed test event, could
carry). A grant must match what was paid: the catalog is the allow-list, a checkout's
currency and pre-discount amount must be the catalog's price x quantity, its livemode the
gateway's. A mismatch grants nothing and answers 422 with the reason; a payment already
granted under another object answers 200 with no second grant.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from creditwallet.client import errors as cw
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.core.settings import ConfigError
from creditwallet.gateway import app as gateway_app
from creditwallet.gateway.config import GatewayConfig
from creditwallet.v1 import common_pb2 as pb
from prometheus_client import generate_latest

from tests import harness
from tests import stripe_fakes as sf
from tests.harness import Ledger, new_user

pytestmark = pytest.mark.usefixtures("verified")

CREDIT = 1_000_000
TOP_UP_1500 = "price_cw_topup_1500"  # 4999 cents in the catalog


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stripe_api() -> AsyncIterator[tuple[sf.FakeStripe, str]]:
    fake = sf.FakeStripe()
    fake.prices[sf.TOP_UP_500] = sf.price(sf.TOP_UP_500, 500, recurring=False)
    fake.prices[TOP_UP_1500] = sf.price(TOP_UP_1500, 1500, recurring=False)
    runner, url = await sf.serve(fake.app())
    yield fake, url
    await runner.cleanup()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gateway(
    ledger: Ledger, stripe_api: tuple[sf.FakeStripe, str]
) -> AsyncIterator[sf.Gateway]:
    config = sf.gateway_config(ledger.target, stripe_api[1], harness.TOKENS["billing"])
    runner, url = await sf.start_gateway(config)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        yield sf.Gateway(url, http)
    await runner.cleanup()


@pytest.fixture
def fake(stripe_api: tuple[sf.FakeStripe, str]) -> sf.FakeStripe:
    return stripe_api[0]


def session(
    user: str, *, amount_subtotal: int | None = 1999, currency: str = "usd", **fields: Any
) -> dict[str, Any]:
    values: dict[str, Any] = {
        "id": sf.new_id("cs"),
        "mode": "payment",
        "payment_status": "paid",
        "client_reference_id": user,
        "customer": sf.new_id("cus"),
        "payment_intent": sf.new_id("pi"),
        "amount_subtotal": amount_subtotal,
        "amount_total": amount_subtotal,
        "currency": currency,
        "subscription": None,
        "invoice": None,
    }
    values.update(fields)
    return sf.obj("checkout.session", **values)


async def deliver(gateway: sf.Gateway, obj: dict[str, Any], **event_fields: Any) -> Any:
    body = json.loads(sf.event("checkout.session.completed", obj, int(time.time())))
    body.update(event_fields)
    raw = json.dumps(body).encode()
    headers = {"Stripe-Signature": sf.sign(raw), "Content-Type": "application/json"}
    async with gateway.http.post(gateway.url + "/stripe/webhook", data=raw, headers=headers) as r:
        return r.status, await r.json()


async def granted(admin: AsyncCreditWalletClient, user: str) -> int:
    try:
        page = await admin.list_transactions(user, page_size=100)
    except cw.AccountNotFound:
        return 0
    return sum(t.amount_micros for t in page.transactions if t.type == pb.TRANSACTION_TYPE_GRANT)


async def test_stripe_down_and_a_cent_for_the_biggest_price_grants_nothing(
    gateway: sf.Gateway, fake: sf.FakeStripe, admin: AsyncCreditWalletClient
) -> None:
    user = new_user()
    fake.down = True
    try:
        lie = session(user, amount_subtotal=1, metadata={"price_id": TOP_UP_1500})
        status, answer = await deliver(gateway, lie)
        honest = session(user, amount_subtotal=4999, metadata={"price_id": TOP_UP_1500})
        status2, _ = await deliver(gateway, honest)
    finally:
        fake.down = False
    assert (status, answer["reason"]) == (422, "amount")
    assert status2 == 200
    assert await granted(admin, user) == 1500 * CREDIT  # the honest one only
    text = generate_latest(gateway_app.REGISTRY).decode()
    assert 'gateway_payment_mismatches_total{reason="amount"}' in text


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"currency": "xxx", "amount_subtotal": 0}, "currency"),
        ({"currency": "eur"}, "currency"),
        ({"amount_subtotal": 1998}, "amount"),
        ({"amount_subtotal": None}, "amount"),
        ({"amount_subtotal": "1999"}, "amount"),
        ({"amount_subtotal": 1999.0}, "amount"),
        ({"livemode": True}, "livemode"),
        ({"livemode": None}, "livemode"),
    ],
)
async def test_a_checkout_that_is_not_the_catalogs_price_grants_nothing(
    gateway: sf.Gateway,
    fake: sf.FakeStripe,
    admin: AsyncCreditWalletClient,
    fields: dict[str, Any],
    reason: str,
) -> None:
    user = new_user()
    obj = session(user, **fields)
    fake.line_items[obj["id"]] = [sf.line_item(fake.prices[sf.TOP_UP_500])]
    status, answer = await deliver(gateway, obj)
    assert (status, answer["reason"]) == (422, reason), answer
    assert await granted(admin, user) == 0


async def test_a_live_event_is_refused_by_a_test_mode_gateway(
    gateway: sf.Gateway, fake: sf.FakeStripe, admin: AsyncCreditWalletClient
) -> None:
    user = new_user()
    obj = session(user, livemode=True)
    fake.line_items[obj["id"]] = [sf.line_item(fake.prices[sf.TOP_UP_500])]
    status, answer = await deliver(gateway, obj, livemode=True)
    assert (status, answer["reason"]) == (422, "livemode")
    obj = session(user)
    fake.line_items[obj["id"]] = [sf.line_item(fake.prices[sf.TOP_UP_500])]
    status, answer = await deliver(gateway, obj, livemode=True)  # event vs session
    assert (status, answer["reason"]) == (422, "livemode")
    assert await granted(admin, user) == 0


async def test_a_price_missing_from_the_catalog_is_never_granted(
    gateway: sf.Gateway, fake: sf.FakeStripe, admin: AsyncCreditWalletClient
) -> None:
    user = new_user()
    inline = sf.price("price_inline_x", 10**9, recurring=False)  # credits=1000000000
    obj = session(user, amount_subtotal=2000)
    fake.line_items[obj["id"]] = [sf.line_item(inline)]
    status, answer = await deliver(gateway, obj)
    assert status == 500
    assert "not in the catalog" in answer["reason"]
    fake.down = True
    try:
        named = session(user, amount_subtotal=2000, metadata={"price_id": "price_inline_x"})
        status, _ = await deliver(gateway, named)
    finally:
        fake.down = False
    assert status == 500
    assert await granted(admin, user) == 0


async def test_discounts_taxes_and_quantities_on_a_matching_price_are_fine(
    gateway: sf.Gateway, fake: sf.FakeStripe, admin: AsyncCreditWalletClient
) -> None:
    user = new_user()
    obj = session(
        user,
        amount_subtotal=3 * 1999,
        amount_total=3 * 1999 - 500 + 120,
        total_details={"amount_discount": 500, "amount_shipping": 0, "amount_tax": 120},
    )
    fake.line_items[obj["id"]] = [sf.line_item(fake.prices[sf.TOP_UP_500], quantity=3)]
    status, _ = await deliver(gateway, obj)
    assert status == 200
    assert await granted(admin, user) == 1500 * CREDIT
    for quantity in (0, -1, 10**10):
        bad = session(user, amount_subtotal=1999 * quantity)
        fake.line_items[bad["id"]] = [sf.line_item(fake.prices[sf.TOP_UP_500], quantity=quantity)]
        status, answer = await deliver(gateway, bad)
        assert (status, answer["reason"]) == (422, "quantity")
    assert await granted(admin, user) == 1500 * CREDIT


async def test_a_payment_recorded_under_another_object_answers_200_once_granted(
    gateway: sf.Gateway, fake: sf.FakeStripe, admin: AsyncCreditWalletClient
) -> None:
    user = new_user()
    first = session(user)
    second = session(user, payment_intent=first["payment_intent"])
    third = session(new_user(), payment_intent=first["payment_intent"])  # another account
    for obj in (first, second, third):
        fake.line_items[obj["id"]] = [sf.line_item(fake.prices[sf.TOP_UP_500])]
    statuses = [(await deliver(gateway, obj))[0] for obj in (first, second, third, second)]
    assert statuses == [200, 200, 200, 200]
    assert await granted(admin, user) == 500 * CREDIT
    assert await granted(admin, third["client_reference_id"]) == 0
    # Two sessions naming one new payment at the same moment: still one grant.
    racers = [session(user, payment_intent="pi_race_" + sf.new_id("x")) for _ in range(1)]
    twin = session(user, payment_intent=racers[0]["payment_intent"])
    for obj in (racers[0], twin):
        fake.line_items[obj["id"]] = [sf.line_item(fake.prices[sf.TOP_UP_500])]
    answers = await asyncio.gather(deliver(gateway, racers[0]), deliver(gateway, twin))
    assert [a[0] for a in answers] in ([200, 200], [200, 500], [500, 200])
    for obj in (racers[0], twin):  # Stripe retries whatever was not 2xx
        assert (await deliver(gateway, obj))[0] == 200
    assert await granted(admin, user) == 1000 * CREDIT


async def test_absurdly_nested_or_malformed_json_is_400(gateway: sf.Gateway) -> None:
    for body in (
        b"[" * 5000 + b"]" * 5000,
        b'{"id": "evt_x", "type": "t", "created": 1, "data": {"object": '
        + b'{"a": ' * 5000
        + b"1"
        + b"}" * 5000
        + b"}}",
        b'{"id": "evt_x", "type": "t", "created": 1, "data": {"object": {}}, "x": '
        + b"[" * 100
        + b"]" * 100
        + b"}",
        b'{"id": "evt_x", "type": "t", "created": true, "data": {"object": {}}}',
        b"\xef\xbb\xbf{}",
        b"NaN",
    ):
        headers = {"Stripe-Signature": sf.sign(body), "Content-Type": "application/json"}
        async with gateway.http.post(
            gateway.url + "/stripe/webhook", data=body, headers=headers
        ) as reply:
            assert reply.status == 400, body[:40]


async def test_slow_headers_slow_bodies_and_too_many_connections_are_cut(
    ledger: Ledger, stripe_api: tuple[sf.FakeStripe, str]
) -> None:
    config = sf.gateway_config(ledger.target, stripe_api[1], harness.TOKENS["billing"])
    config = GatewayConfig(**{**config.__dict__, "body_timeout_seconds": 0.5})
    runner, url = await sf.start_gateway(config, connections_max=4, headers_timeout_seconds=0.5)
    port = int(url.rsplit(":", 1)[1])
    socks: list[socket.socket] = []
    try:
        # Trickling headers: closed once the header timeout passes, whatever still trickles.
        trickler = socket.create_connection(("127.0.0.1", port), timeout=5)
        socks.append(trickler)
        trickler.sendall(b"POST /stripe/webhook HTTP/1.1\r\nHost: x\r\n")
        closed_at = None
        for _ in range(40):
            await asyncio.sleep(0.1)
            try:
                trickler.sendall(b"X-A: b\r\n")
            except OSError:
                closed_at = time.monotonic()
                break
        assert closed_at is not None, "a trickling client kept its connection"
        # A body that never comes: 408.
        slow = socket.create_connection(("127.0.0.1", port), timeout=5)
        socks.append(slow)
        slow.sendall(b"POST /stripe/webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        reply = await asyncio.to_thread(slow.recv, 200)
        assert reply.startswith(b"HTTP/1.1 408"), reply
        # More connections than the cap: the extra are closed as they are accepted.
        idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(6)]
        socks.extend(idle)
        await asyncio.sleep(0.2)
        closed = sum(1 for sock in idle if _closed_by_peer(sock))
        assert closed >= 2
        for sock in idle:
            sock.close()
        await asyncio.sleep(0.3)
        async with (
            aiohttp.ClientSession() as http,
            http.get(url + "/metrics", timeout=aiohttp.ClientTimeout(total=5)) as ok,
        ):
            assert ok.status == 200  # served again once they went
    finally:
        for sock in socks:
            sock.close()
        await runner.cleanup()


def _closed_by_peer(sock: socket.socket) -> bool:
    sock.settimeout(0.3)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"BILLING_TOKEN": "short"}, "BILLING_TOKEN"),
        ({"CRON_SECRET": "c"}, "CRON_SECRET"),
        ({"LEDGER_TLS_CERT_PATH": "/etc/hostname"}, "LEDGER_TLS_KEY_PATH"),
        ({"LEDGER_TLS_KEY_PATH": "/etc/hostname"}, "LEDGER_TLS_CERT_PATH"),
        ({"LEDGER_TLS_CA_PATH": "/nonexistent"}, "LEDGER_TLS_CA_PATH"),
        ({"LEDGER_TLS": "off", "LEDGER_TLS_CA_PATH": "/etc/hostname"}, "LEDGER_TLS"),
        ({"STRIPE_MODE": ""}, "STRIPE_MODE"),
        ({"STRIPE_SECRET_KEY": "sk_live_x", "STRIPE_MODE": "test"}, "STRIPE_MODE"),
        ({"STRIPE_SECRET_KEY": "pk_test_x", "STRIPE_MODE": ""}, "STRIPE_SECRET_KEY"),
    ],
)
def test_gateway_settings_fail_closed(change: dict[str, str], named: str) -> None:
    env = {
        "BILLING_TOKEN": harness.TOKENS["billing"],
        "STRIPE_WEBHOOK_SECRET": sf.SECRETS[0],
        "CRON_SECRET": sf.CRON_SECRET,
        "STRIPE_MODE": "test",
        **change,
    }
    with pytest.raises(ConfigError, match=named):
        GatewayConfig.from_env({k: v for k, v in env.items() if v})


def test_gateway_mode_comes_from_the_key_or_the_setting() -> None:
    base = {
        "BILLING_TOKEN": harness.TOKENS["billing"],
        "STRIPE_WEBHOOK_SECRET": sf.SECRETS[0],
        "CRON_SECRET": sf.CRON_SECRET,
    }
    assert GatewayConfig.from_env({**base, "STRIPE_SECRET_KEY": "sk_live_x"}).livemode
    assert not GatewayConfig.from_env({**base, "STRIPE_SECRET_KEY": "rk_test_x"}).livemode
    assert GatewayConfig.from_env({**base, "STRIPE_MODE": "live"}).livemode
    tls = GatewayConfig.from_env({**base, "STRIPE_MODE": "test", "LEDGER_TLS": "on"})
    assert tls.ledger_tls
    assert tls.ledger_tls_ca_path is None
