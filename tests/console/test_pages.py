"""The operators' console in a real headless Chromium, against a real ledger.

Each test signs in as an operator would, reads what the page shows, and checks it against
what the ledger says through the client; every test keeps a screenshot.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from pathlib import Path

from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.core.units import MICROS_PER_CREDIT, format_credits
from creditwallet.v1 import common_pb2
from playwright.async_api import Browser, Page, expect

from tests import harness
from tests.console import kit
from tests.console.kit import new_page, shoot, sign_in

CREDIT = MICROS_PER_CREDIT


async def _busy_account(admin: AsyncCreditWalletClient, agent: AsyncCreditWalletClient) -> str:
    """An account with three kinds of lots (the promo one burnt first and only by the
    summarizer), two pending holds and a history of agent debits."""
    user = harness.new_user()
    await agent.ensure_account(user)  # the trial lot
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=7)
    await admin.grant(
        user,
        40 * CREDIT,
        common_pb2.LOT_SOURCE_PROMO,
        expires_at=soon,
        priority=10,
        agent_ids=["summarizer"],
    )
    await admin.grant(user, 100 * CREDIT, common_pb2.LOT_SOURCE_TOP_UP)
    await admin.set_agent_price("summarizer", 2 * CREDIT, unit="run")
    await admin.set_agent_price("translator", CREDIT // 2, unit="page")
    for _ in range(3):
        await agent.debit(user, agent_id="summarizer", quantity=2)
        await agent.debit(user, agent_id="translator", quantity=3)
    await agent.authorize(user, amount_micros=3 * CREDIT)
    await agent.authorize(user, agent_id="summarizer")
    return user


async def _texts(page: Page, selector: str) -> list[str]:
    """The text of each element (SVG ones included, which have no innerText)."""
    found: list[str] = await page.locator(selector).evaluate_all(
        "elements => elements.map(e => e.textContent)"
    )
    return found


async def _available_text(page: Page) -> str:
    return (await page.locator("#available").inner_text()).strip()


async def test_sign_in_search_and_an_account_with_lots_holds_and_history(
    browser: Browser,
    console: str,
    admin: AsyncCreditWalletClient,
    agent: AsyncCreditWalletClient,
    tmp_path: Path,
) -> None:
    user = await _busy_account(admin, agent)
    context, page = await new_page(browser)
    # Every page but sign-in sends a stranger to sign in.
    await page.goto(f"{console}/accounts/{user}")
    assert page.url.endswith("/sign-in")
    await sign_in(page, console, token="not-the-token-" + "x" * 30)
    await expect(page.get_by_role("alert")).to_contain_text("that token is not the one")
    await shoot(page, tmp_path, "sign-in")
    await sign_in(page, console)
    await page.get_by_label("User id").fill(user)
    await page.get_by_role("button", name="Open").click()
    await expect(page.get_by_role("heading", level=1)).to_contain_text(user)

    balance = await admin.get_balance(user)
    assert await _available_text(page) == format_credits(balance.available_micros)
    held = page.locator("#held .amount")
    assert await held.get_attribute("title") == f"{balance.held_micros} micros"
    lots = page.locator("#lots tbody tr")
    # The trial went to the translator's debits and the hold by amount (the promo lot is
    # the summarizer's only): promo and top-up are left.
    assert await lots.count() == sum(len(g.lots) for g in balance.lots) == 2
    await expect(page.locator("#lots")).to_contain_text("top up")
    await expect(page.locator("#lots")).to_contain_text("promo")
    await expect(page.locator("#lots")).to_contain_text("never")
    promo = page.locator("#lots tbody tr", has_text="promo")
    await expect(promo).to_contain_text("summarizer")
    await expect(promo.locator("td").nth(5)).to_have_text("10")
    await expect(page.locator("#lots tbody tr", has_text="top up")).to_contain_text("any")
    assert await page.locator("#holds tbody tr").count() == 2
    history = page.locator("#history tbody tr")
    assert await history.count() == 9  # trial + 2 grants + 6 debits
    await expect(history.first).to_contain_text("debit")
    # The charts: today's spend per agent, with the exact micros in the tooltip.
    titles = await _texts(page, "#spend-chart-caption ~ svg rect title")
    today = dt.datetime.now(dt.UTC).date().isoformat()
    assert f"{today} summarizer: 12 credits (12000000 micros)" in titles
    assert f"{today} translator: 4.5 credits (4500000 micros)" in titles
    dots = await _texts(page, "#balance-chart-caption ~ svg circle title")
    assert dots[-1] == f"{today}: {_credits(balance.available_micros + balance.held_micros)}"
    await shoot(page, tmp_path, "account")
    # The type filter.
    await page.get_by_label("Type", exact=True).select_option("grant")
    await page.get_by_role("button", name="Filter").click()
    assert await page.locator("#history tbody tr").count() == 3
    await context.close()

    context, phone = await new_page(browser, phone=True)
    await sign_in(phone, console)
    await phone.goto(f"{console}/accounts/{user}")
    await expect(phone.locator("#available")).to_be_visible()
    # Nothing wider than the phone's screen but the tables' own scrolling boxes.
    width = await phone.evaluate("document.documentElement.scrollWidth")
    assert width <= kit.PHONE["width"]
    await shoot(phone, tmp_path, "account-phone")
    await context.close()


def _credits(micros: int) -> str:
    return f"{format_credits(micros)} credits ({micros} micros)"


async def test_history_pages_while_debits_are_written_show_each_row_once(
    browser: Browser,
    console: str,
    admin: AsyncCreditWalletClient,
    agent: AsyncCreditWalletClient,
    tmp_path: Path,
) -> None:
    user = harness.new_user()
    await admin.grant(user, 1000 * CREDIT, common_pb2.LOT_SOURCE_PROMO, create_account=True)
    for _ in range(60):
        await agent.debit(user, amount_micros=CREDIT)
    context, page = await new_page(browser)
    await sign_in(page, console)
    await page.goto(f"{console}/accounts/{user}")
    stop = asyncio.Event()

    async def write() -> int:
        written = 0
        while not stop.is_set():
            await agent.debit(user, amount_micros=CREDIT)
            written += 1
            await asyncio.sleep(0)
        return written

    writer = asyncio.create_task(write())
    seen: list[int] = []
    pages = 0
    while True:
        ids = await page.locator("#history tbody tr").evaluate_all(
            "rows => rows.map(r => r.dataset.transaction)"
        )
        seen += [int(i) for i in ids]
        pages += 1
        older = page.locator("#older")
        if await older.count() == 0:
            break
        await older.click()
        await page.wait_for_load_state()
    stop.set()
    written = await writer
    assert written > 0
    assert pages >= 3
    assert len(seen) == len(set(seen)), "a row was shown twice"
    # Exactly the rows that existed when the first page was drawn: no gap, no repeat.
    everything: list[int] = []
    token = ""
    while True:
        listed = await admin.list_transactions(user, page_size=500, page_token=token)
        everything += [int(t.transaction_id) for t in listed.transactions]
        token = listed.next_page_token
        if not token:
            break
    assert seen == [i for i in everything if i <= seen[0]]
    await shoot(page, tmp_path, "history-last-page")
    await context.close()


async def test_grant_and_reverse_with_confirmation_change_the_balance(
    browser: Browser,
    console: str,
    admin: AsyncCreditWalletClient,
    agent: AsyncCreditWalletClient,
    tmp_path: Path,
) -> None:
    user = harness.new_user()
    await agent.ensure_account(user)
    debit = await agent.debit(user, amount_micros=3 * CREDIT)
    context, page = await new_page(browser)
    await sign_in(page, console)
    await page.goto(f"{console}/accounts/{user}")
    assert await _available_text(page) == "2"

    await page.get_by_label("Source").select_option("promo")
    await page.get_by_label("Amount (credits)").fill("12.5")
    await page.get_by_label("Note").first.fill("make good for the outage")
    await page.get_by_role("button", name="Grant…").click()
    # Nothing has changed yet: the confirmation says what will.
    await expect(page.get_by_role("heading", level=1)).to_have_text(f"Grant credits to {user}?")
    await expect(page.locator(".confirm-lines")).to_contain_text(
        "Grant 12.5 credits (12500000 micros)"
    )
    assert (await admin.get_balance(user)).available_micros == 2 * CREDIT
    await shoot(page, tmp_path, "confirm-grant")
    confirmation = {
        name: await page.locator(f"#main input[name={name}]").get_attribute("value")
        for name in ("csrf", "source", "amount", "expires_at", "note", "step", "request_id")
    }
    await page.get_by_role("button", name="Confirm").click()
    await expect(page.get_by_role("status")).to_contain_text("Granted 12.5 credits")
    assert await _available_text(page) == "14.5"
    assert (await admin.get_balance(user)).available_micros == 14_500_000

    # The same confirmation sent again is a replay: no second grant.
    again = await page.request.post(
        f"{console}/accounts/{user}/grant", form={k: v or "" for k, v in confirmation.items()}
    )
    assert again.ok
    assert "replayed" in await again.text()
    assert (await admin.get_balance(user)).available_micros == 14_500_000

    # Reverse a part of the debit, starting from its row of the history.
    await page.locator(f"#history tr[data-transaction='{debit.transaction_id}'] a").click()
    assert await page.get_by_label("Debit transaction").input_value() == debit.transaction_id
    await page.get_by_label("Amount (credits; empty for all of it)").fill("1")
    await page.get_by_role("button", name="Reverse…").click()
    await expect(page.locator(".confirm-lines")).to_contain_text("Give back 1 credits")
    await page.get_by_role("button", name="Confirm").click()
    await expect(page.get_by_role("status")).to_contain_text("Reversed 1 credits")
    assert await _available_text(page) == "15.5"
    # Then the rest: more than what is left is refused with the ledger's reason, in words.
    await page.get_by_label("Debit transaction").fill(debit.transaction_id)
    await page.get_by_label("Amount (credits; empty for all of it)").fill("5")
    await page.get_by_role("button", name="Reverse…").click()
    await page.get_by_role("button", name="Confirm").click()
    await expect(page.get_by_role("alert")).to_contain_text(
        "more than what is left of the debit would be reversed"
    )
    await expect(page.get_by_role("alert")).to_contain_text("REVERSAL_EXCEEDS_DEBIT")
    await shoot(page, tmp_path, "refused-reversal")
    await page.goto(f"{console}/accounts/{user}")
    await page.get_by_label("Debit transaction").fill(debit.transaction_id)
    await page.get_by_role("button", name="Reverse…").click()
    await expect(page.locator(".confirm-lines")).to_contain_text("everything not yet reversed")
    await page.get_by_role("button", name="Confirm").click()
    await expect(page.get_by_role("status")).to_contain_text("Reversed 2 credits")
    assert await _available_text(page) == "17.5"
    await context.close()


async def test_void_a_hold_and_set_an_agent_price(
    browser: Browser,
    console: str,
    admin: AsyncCreditWalletClient,
    agent: AsyncCreditWalletClient,
    tmp_path: Path,
) -> None:
    user = harness.new_user()
    await agent.ensure_account(user)
    hold = await agent.authorize(user, amount_micros=2 * CREDIT)
    context, page = await new_page(browser)
    await sign_in(page, console)
    await page.goto(f"{console}/accounts/{user}")
    assert await _available_text(page) == "3"
    await page.get_by_role("button", name=f"Void hold {hold.hold_id}").click()
    await expect(page.get_by_role("heading", level=1)).to_contain_text("Void hold")
    await page.get_by_role("button", name="Confirm").click()
    await expect(page.get_by_role("status")).to_contain_text("released 2 credits")
    assert await _available_text(page) == "5"
    assert await page.locator("#holds tbody tr").inner_text() == "No pending holds."

    await page.get_by_role("link", name="Agent prices").click()
    await page.get_by_label("Agent id").fill("painter")
    await page.get_by_label("Price per unit (credits)").fill("0.75")
    await page.get_by_label("Unit", exact=True).fill("image")
    await page.get_by_role("button", name="Set price…").click()
    await expect(page.locator(".confirm-lines")).to_contain_text("0.75 credits (750000 micros)")
    await page.get_by_role("button", name="Confirm").click()
    await expect(page.get_by_role("status")).to_contain_text("painter now costs 0.75 credits")
    await expect(page.locator("#prices")).to_contain_text("painter")
    listed = await admin.list_agent_prices()
    assert any(p.agent_id == "painter" and p.price_micros == 750_000 for p in listed.prices)
    await shoot(page, tmp_path, "prices")
    await context.close()


async def test_the_overview_and_the_webhooks(
    browser: Browser,
    console: str,
    admin: AsyncCreditWalletClient,
    agent: AsyncCreditWalletClient,
    tmp_path: Path,
) -> None:
    await _busy_account(admin, agent)
    daily = await admin.get_daily_totals()
    context, page = await new_page(browser)
    await sign_in(page, console)
    await page.get_by_role("link", name="Overview").click()
    stats = await admin.get_stats()
    await expect(page.locator("#totals")).to_contain_text(str(stats.total_users))
    await expect(page.locator("#verify-result")).to_contain_text("All invariants hold")
    top = daily.top_agents[0]
    await expect(page.locator("#top-agents tbody tr").first).to_contain_text(top.agent_id)
    titles = await _texts(page, "#daily-chart-caption ~ svg rect title")
    spent = -sum(
        t.amount_micros
        for t in daily.totals
        if t.type == common_pb2.TRANSACTION_TYPE_DEBIT and t.date == daily.end_date
    )
    assert any(re.fullmatch(rf"{daily.end_date} spent: .* \({spent} micros\)", t) for t in titles)
    await shoot(page, tmp_path, "overview")
    await page.get_by_role("link", name="Webhooks").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Webhook endpoints")
    await shoot(page, tmp_path, "webhooks")
    await context.close()
