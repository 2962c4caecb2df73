"""A catalog price may set the burn-down priority of the top-up lot it grants."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.gateway import catalog
from creditwallet.v1 import common_pb2 as pb

from tests import harness
from tests import stripe_fakes as sf
from tests.harness import Ledger, new_user

pytestmark = pytest.mark.usefixtures("verified")

SEED = json.loads(Path(catalog.__file__).with_name("catalog.json").read_text(encoding="utf-8"))


def write_catalog(path: Path, **entry_changes: dict[str, object]) -> Path:
    raw = json.loads(json.dumps(SEED))
    for price_id, changes in entry_changes.items():
        raw["prices"][price_id].update(changes)
    path.write_text(json.dumps(raw), encoding="utf-8")
    return path


def test_the_catalog_checks_a_priority(tmp_path: Path) -> None:
    good = catalog.load(write_catalog(tmp_path / "a.json", price_cw_topup_500={"priority": 0}))
    assert good["price_cw_topup_500"].priority == 0
    assert good["price_cw_topup_100"].priority is None
    for changes in (
        {"price_cw_topup_500": {"priority": 101}},
        {"price_cw_topup_500": {"priority": "10"}},
        {"price_cw_topup_500": {"priority": True}},
        {"price_cw_monthly_250": {"priority": 10}},
    ):
        with pytest.raises(ValueError, match="priority"):
            catalog.load(write_catalog(tmp_path / "b.json", **changes))
    prices = [(good["price_cw_topup_500"], 1), (good["price_cw_topup_100"], 2)]
    assert catalog.lot_priority(prices) == 0
    assert catalog.lot_priority(prices[1:]) is None


async def test_a_checkout_of_a_priced_top_up_grants_a_lot_with_its_priority(
    ledger: Ledger, admin: AsyncCreditWalletClient, tmp_path: Path
) -> None:
    fake = sf.FakeStripe()
    fake.prices[sf.TOP_UP_500] = sf.price(sf.TOP_UP_500, 500, recurring=False)
    stripe, url = await sf.serve(fake.app())
    config = dataclasses.replace(
        sf.gateway_config(ledger.target, url, harness.TOKENS["billing"]),
        catalog_path=write_catalog(tmp_path / "c.json", price_cw_topup_500={"priority": 20}),
    )
    runner, gateway = await sf.start_gateway(config)
    try:
        user = new_user()
        obj: dict[str, Any] = {
            "id": sf.new_id("cs"),
            "mode": "payment",
            "payment_status": "paid",
            "client_reference_id": user,
            "customer": sf.new_id("cus"),
            "payment_intent": sf.new_id("pi"),
            "amount_subtotal": 1999,
            "amount_total": 1999,
            "currency": "usd",
            "subscription": None,
            "livemode": False,
        }
        fake.line_items[obj["id"]] = [sf.line_item(fake.prices[sf.TOP_UP_500])]
        raw = sf.event("checkout.session.completed", obj, int(time.time()))
        headers = {"Stripe-Signature": sf.sign(raw), "Content-Type": "application/json"}
        async with (
            aiohttp.ClientSession() as http,
            http.post(gateway + "/stripe/webhook", data=raw, headers=headers) as r,
        ):
            assert r.status == 200, await r.text()
        state = await admin.get_balance(user)
        lots = [lot for g in state.lots for lot in g.lots]
        assert [(lot.source, lot.priority) for lot in lots] == [(pb.LOT_SOURCE_TOP_UP, 20)]
    finally:
        await runner.cleanup()
        await stripe.cleanup()
