"""Hostile deliveries to the webhook gateway: bodies, headers and signatures.

Unsigned, forged, stale or malformed deliveries get 400 and change nothing in the ledger.
Correctly signed events whose objects are Stripe's fixtures with hostile values put in
(wrong types, huge and negative numbers, unicode, NULs, missing fields) never crash the
gateway — every answer is one of its own JSON answers, never aiohttp's bare 500 — never a
3xx, and never pass on an INTERNAL or UNKNOWN from the ledger. Whatever they did apply, the
ledger still verifies (the ``verified`` fixture). The 413 for an oversized body is covered in
tests/gateway/test_gateway.py.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from creditwallet.gateway import events
from hypothesis import event, given
from hypothesis import strategies as st

from tests import harness, hostile
from tests import stripe_fakes as sf
from tests.harness import Ledger, new_user

pytestmark = pytest.mark.usefixtures("verified")

OBJECT_OF = {
    "checkout.session.completed": "checkout.session",
    "checkout.session.async_payment_succeeded": "checkout.session",
    "invoice.paid": "invoice",
    "invoice.payment_failed": "invoice",
    "customer.subscription.created": "subscription",
    "customer.subscription.updated": "subscription",
    "customer.subscription.deleted": "subscription",
    "charge.refunded": "charge",
    "payment_intent.succeeded": "payment_intent",
    "payment_intent.payment_failed": "payment_intent",
    "customer.created": "customer",
}
assert set(events.HANDLED) <= set(OBJECT_OF)
GATEWAY_ERRORS_OK = ("price credits unknown or disputed", "malformed", "bad signature")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gateway(ledger: Ledger) -> AsyncIterator[sf.Gateway]:
    fake = sf.FakeStripe()
    fake.prices[sf.MONTHLY] = sf.price(sf.MONTHLY, 250, recurring=True)
    fake.prices[sf.TOP_UP_500] = sf.price(sf.TOP_UP_500, 500, recurring=False)
    stripe_runner, stripe_url = await sf.serve(fake.app())
    config = sf.gateway_config(ledger.target, stripe_url, harness.TOKENS["billing"])
    runner, url = await sf.start_gateway(config)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        yield sf.Gateway(url, http)
    await runner.cleanup()
    await stripe_runner.cleanup()


def json_values() -> st.SearchStrategy[Any]:
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        hostile.int64_values(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        hostile.hostile_strings([sf.MONTHLY, sf.TOP_UP_500, "paid", "payment", "subscription"]),
    )
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
        ),
        max_leaves=8,
    )


@st.composite
def hostile_events(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(sorted(OBJECT_OF)))
    data = sf.obj(OBJECT_OF[kind])
    if kind.startswith("checkout") and draw(st.booleans()):
        data["client_reference_id"] = new_user()
    keys = draw(st.lists(st.sampled_from(sorted(data)), max_size=6, unique=True))
    for key in keys:
        if draw(st.booleans()):
            data[key] = draw(json_values())
        else:
            del data[key]
    created = draw(st.one_of(st.just(int(time.time())), hostile.int64_values()))
    return sf.event(kind, data, created, event_id=draw(hostile.hostile_strings()))


async def post(gateway: sf.Gateway, body: bytes, signature: str | None) -> tuple[int, str, str]:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["Stripe-Signature"] = signature
    async with gateway.http.post(
        gateway.url + "/stripe/webhook",
        data=io.BytesIO(body),
        headers=headers,
        allow_redirects=False,
    ) as reply:
        return reply.status, reply.content_type, await reply.text()


def forged_signatures(body_text: st.SearchStrategy[bytes]) -> st.SearchStrategy[str | None]:
    now = int(time.time())
    return st.one_of(
        st.none(),
        # Header-safe garbage only: aiohttp (the client) refuses control characters itself.
        st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200),
        st.just(f"t={now},v1=" + "0" * 64),
        st.just(f"t=not-a-time,v1={'0' * 64},v1=,v0=x"),
        st.builds(lambda b: sf.sign(b, secret="whsec_forged"), body_text),
        # Stale or future by more than the 300 s tolerance, timed when drawn (a time taken
        # when the module was collected would be within tolerance of a late run).
        st.builds(lambda b: sf.sign(b, at=int(time.time()) - 310), body_text),
        st.builds(lambda b: sf.sign(b, at=int(time.time()) + 310), body_text),
    )


@given(data=st.data())
async def test_unsigned_forged_or_malformed_deliveries_get_400_and_change_nothing(
    gateway: sf.Gateway, ledger: Ledger, data: st.DataObject
) -> None:
    body = data.draw(st.one_of(st.binary(max_size=512), hostile_events()), label="body")
    signature = data.draw(forged_signatures(st.just(body)), label="signature")
    before = await hostile.snapshot(ledger)
    status, content_type, _ = await post(gateway, body, signature)
    assert status == 400
    assert content_type == "application/json"
    assert await hostile.snapshot(ledger) == before


@given(data=st.data())
async def test_signed_bodies_that_are_not_events_get_400(
    gateway: sf.Gateway, ledger: Ledger, data: st.DataObject
) -> None:
    body = data.draw(
        st.one_of(st.binary(max_size=512), json_values().map(lambda v: json.dumps(v).encode())),
        label="body",
    )
    before = await hostile.snapshot(ledger)
    status, _, _ = await post(gateway, body, sf.sign(body))
    assert status == 400, body
    assert await hostile.snapshot(ledger) == before


@given(body=hostile_events())
async def test_signed_hostile_events_never_crash_the_gateway(
    gateway: sf.Gateway, body: bytes
) -> None:
    status, content_type, text = await post(gateway, body, sf.sign(body))
    event(
        f"status {status} {text[:60] if status != 200 else ''}"
    )  # the spread shows in --hypothesis-show-statistics
    assert content_type == "application/json", (status, text[:200])  # not aiohttp's bare 500
    assert status in (200, 400, 422, 500, 503), (status, text[:200])
    if status >= 500:
        error = json.loads(text)["error"]
        assert "INTERNAL" not in error, error
        assert "UNKNOWN" not in error, error
