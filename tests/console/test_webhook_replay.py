"""The webhooks page's replay, in a real Chromium: an endpoint that gave up on deliveries
(its receiver down for the whole retry window) gets them again once the operator confirms,
once however often the confirmation is sent."""

from __future__ import annotations

from pathlib import Path

from creditwallet.client.console.app import serving
from creditwallet.client.console.config import ConsoleConfig
from creditwallet.core.settings import Secret
from creditwallet.v1 import events_pb2 as epb
from playwright.async_api import Browser, expect

from tests import events_kit, harness
from tests.console.kit import new_page, shoot, sign_in
from tests.events_kit import Receiver

CREDIT = 1_000_000


async def test_given_up_deliveries_are_delivered_again_from_the_console(
    base_dsn: str, data_dir: Path, receiver: Receiver, browser: Browser, tmp_path: Path
) -> None:
    endpoint = events_kit.endpoint("crm", receiver.url, receiver.secret, ("credits.debited",))
    ledger = await events_kit.start(base_dsn, data_dir, endpoints=(endpoint,))
    admin = ledger.client("admin")
    config = ConsoleConfig(
        host="127.0.0.1",
        port=0,
        ledger_target=ledger.target,
        admin_token=Secret(harness.TOKENS["admin"]),
    )
    try:
        user = harness.new_user()
        await admin.ensure_account(user)
        receiver.up = False
        for _ in range(2):
            await admin.debit(user, amount_micros=CREDIT // 100)
        await events_kit.give_up(ledger, receiver, "crm", user, 2)
        receiver.up = True
        async with serving(config) as (_, port):
            context, page = await new_page(browser)
            await sign_in(page, f"http://127.0.0.1:{port}")
            await page.get_by_role("link", name="Webhooks").click()
            await expect(page.locator("#endpoints")).to_contain_text("crm")
            await shoot(page, tmp_path, "webhooks-given-up")
            replay = page.get_by_role("button", name="Deliver the given-up events to crm again")
            await replay.click()
            await expect(page.get_by_role("heading", level=1)).to_have_text(
                "Deliver the given-up events to crm again?"
            )
            assert receiver.unique() == {}, "nothing is queued before the confirmation"
            await shoot(page, tmp_path, "confirm-replay")
            confirmation = {
                name: await page.locator(f"#main input[name={name}]").get_attribute("value")
                for name in ("csrf", "endpoint_id", "step", "request_id")
            }
            await page.get_by_role("button", name="Confirm").click()
            await expect(page.get_by_role("status")).to_contain_text(
                "Queued 2 given-up deliveries to crm again."
            )

            async def delivered() -> bool:
                return len(receiver.unique()) == 2

            await events_kit.wait_for(delivered, "the replayed deliveries arrive")
            # The same confirmation sent again: the ledger's stored answer, nothing queued.
            again = await page.request.post(
                f"http://127.0.0.1:{port}/webhooks/replay",
                form={k: v or "" for k, v in confirmation.items()},
            )
            assert again.ok
            assert "Queued 2 given-up deliveries to crm again (replayed)." in await again.text()
            await context.close()
        failed = epb.ListEventsRequest(user_id=user, endpoint_id="crm", delivery_status="failed")
        assert list((await admin.admin.ListEvents(failed)).events) == []
        assert [d.body["type"] for d in receiver.acknowledged()] == ["credits.debited"] * 2
    finally:
        await ledger.close()
