"""The console under attack, in a real headless Chromium: forged forms, injected markup,
stolen cookies after sign-out; and its accessibility checked by axe-core.

An attacker's page is served from another port of 127.0.0.1 (another origin, but the same
site, so a SameSite cookie alone would not stop it): its form posts a grant to the console.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web
from axe_playwright_python.async_playwright import Axe
from creditwallet.client.wallet import AsyncCreditWalletClient
from creditwallet.core.units import MICROS_PER_CREDIT
from playwright.async_api import Browser, Page, expect

from tests import harness
from tests.console.kit import dialogs_of, new_page, shoot, sign_in

CREDIT = MICROS_PER_CREDIT
SCRIPT = "<script>alert('user id')</script>"
MARKUP = "<img src=x onerror=alert('metadata')><script>alert('note')</script>"


@contextlib.asynccontextmanager
async def attacker_site(console: str, user: str) -> AsyncIterator[str]:
    """A page elsewhere with a form that grants 1000 credits through the console."""
    html = f"""<!doctype html><html lang="en"><title>win</title><body>
<form method="post" action="{console}/accounts/{user}/grant">
<input type="hidden" name="source" value="promo"><input type="hidden" name="amount" value="1000">
<input type="hidden" name="step" value="apply">
<input type="hidden" name="request_id" value="00000000-0000-4000-8000-000000000001">
<button type="submit">Claim your prize</button></form></body></html>"""

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=html, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        await runner.cleanup()


async def _signed_in(browser: Browser, console: str) -> Page:
    _, page = await new_page(browser)
    await sign_in(page, console)
    return page


async def test_a_forged_form_without_the_csrf_token_is_refused(
    browser: Browser,
    console: str,
    admin: AsyncCreditWalletClient,
    agent: AsyncCreditWalletClient,
    tmp_path: Path,
) -> None:
    user = harness.new_user()
    await agent.ensure_account(user)
    before = (await admin.get_balance(user)).available_micros
    page = await _signed_in(browser, console)
    # A page of another origin, in the same browser, posting with the operator's cookie.
    async with attacker_site(console, user) as url:
        await page.goto(url)
        await page.get_by_role("button", name="Claim your prize").click()
        await expect(page.get_by_role("alert")).to_contain_text("refused")
        await shoot(page, tmp_path, "forged-form-refused")
    # The same form with no browser headers to give it away: the CSRF token is what stops it.
    fields: dict[str, str | float | bool] = {
        "source": "promo",
        "amount": "1000",
        "step": "apply",
        "request_id": "00000000-0000-4000-8000-000000000002",
    }
    forged = await page.request.post(f"{console}/accounts/{user}/grant", form=fields)
    assert forged.status == 403
    assert "no valid CSRF token" in await forged.text()
    wrong = await page.request.post(
        f"{console}/accounts/{user}/grant", form={**fields, "csrf": "guessed"}
    )
    assert wrong.status == 403
    assert (await admin.get_balance(user)).available_micros == before
    # The session's own token, by contrast, goes through (the check is not refusing all).
    await page.goto(f"{console}/accounts/{user}")
    csrf = await page.locator("#grant-form input[name=csrf]").get_attribute("value")
    assert csrf
    fair = await page.request.post(
        f"{console}/accounts/{user}/grant", form={**fields, "amount": "1", "csrf": csrf}
    )
    assert fair.ok
    assert (await admin.get_balance(user)).available_micros == before + CREDIT
    await page.context.close()


async def test_script_in_a_user_id_or_in_metadata_is_shown_as_text(
    browser: Browser,
    console: str,
    admin: AsyncCreditWalletClient,
    agent: AsyncCreditWalletClient,
    tmp_path: Path,
) -> None:
    user = harness.new_user()
    await agent.ensure_account(user)
    await agent.debit(user, amount_micros=CREDIT, metadata={"comment": MARKUP})
    page = await _signed_in(browser, console)
    # Through the search box: the ledger refuses the id, and the page shows it as typed.
    await page.get_by_label("User id").fill(SCRIPT)
    await page.get_by_role("button", name="Open").click()
    await expect(page.locator(".user-query")).to_have_text(SCRIPT)
    await expect(page.get_by_role("alert")).to_contain_text("the request is malformed")
    await shoot(page, tmp_path, "injected-user-id")
    # Through the address bar, in the path.
    await page.goto(f"{console}/accounts/%3Cscript%3Ealert(1)%3C%2Fscript%3E")
    await expect(page.get_by_role("alert")).to_contain_text("INVALID_ARGUMENT")
    # Through metadata a caller wrote, and a note the operator typed into a grant.
    await page.goto(f"{console}/accounts/{user}")
    await page.get_by_label("Amount (credits)").fill("1")
    await page.locator("#grant-note").fill(MARKUP)
    await page.get_by_role("button", name="Grant…").click()
    await expect(page.locator(".confirm-lines")).to_contain_text(MARKUP)
    await page.get_by_role("button", name="Confirm").click()
    values = page.locator("#history .meta .value")
    await expect(values.filter(has_text="onerror")).to_have_count(2)
    assert await page.locator("#history img, #history script").count() == 0
    await shoot(page, tmp_path, "injected-metadata")
    assert dialogs_of(page) == []
    await page.context.close()


async def test_sign_out_ends_the_session_and_its_cookie(
    browser: Browser,
    console: str,
    admin: AsyncCreditWalletClient,
    agent: AsyncCreditWalletClient,
    tmp_path: Path,
) -> None:
    user = harness.new_user()
    await agent.ensure_account(user)
    page = await _signed_in(browser, console)
    (cookie,) = await page.context.cookies()
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["secure"] is False  # plain HTTP on loopback: Secure only behind TLS
    assert cookie["expires"] > 0
    await page.goto(f"{console}/accounts/{user}")
    csrf = await page.locator("#grant-form input[name=csrf]").get_attribute("value")
    reply = await page.request.get(f"{console}/accounts/{user}")
    csp = reply.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "script-src" not in csp
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    await shoot(page, tmp_path, "signed-out")
    # The old cookie, replayed from a fresh browser, opens nothing and changes nothing.
    _, thief = await new_page(browser)
    await thief.context.add_cookies(
        [{"name": cookie["name"], "value": cookie["value"], "url": console}]
    )
    await thief.goto(f"{console}/accounts/{user}")
    assert thief.url.endswith("/sign-in")
    stolen = await thief.request.post(
        f"{console}/accounts/{user}/grant",
        form={
            "csrf": csrf or "",
            "source": "promo",
            "amount": "5",
            "step": "apply",
            "request_id": "00000000-0000-4000-8000-000000000003",
        },
    )
    assert stolen.status == 403
    assert (await admin.get_balance(user)).available_micros == 5 * CREDIT
    await page.context.close()
    await thief.context.close()


async def test_the_pages_pass_axe_core_checks(
    browser: Browser,
    console: str,
    admin: AsyncCreditWalletClient,
    agent: AsyncCreditWalletClient,
    tmp_path: Path,
) -> None:
    """Labels, headings, landmarks, contrast (WCAG 2.1 A and AA rules of axe-core)."""
    user = harness.new_user()
    await agent.ensure_account(user)
    await admin.set_agent_price("axe-agent", CREDIT)
    await agent.debit(user, agent_id="axe-agent")
    await agent.authorize(user, amount_micros=CREDIT)
    axe = Axe()
    options = {"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21aa"]}}
    for phone in (False, True):
        _, page = await new_page(browser, phone=phone)
        await page.goto(f"{console}/sign-in")
        pages = {"sign-in": page.url}
        await sign_in(page, console)
        pages |= {
            "search": f"{console}/accounts",
            "account": f"{console}/accounts/{user}",
            "overview": f"{console}/overview",
            "prices": f"{console}/prices",
            "webhooks": f"{console}/webhooks",
        }
        if phone:  # the pages whose layout changes most at phone width
            pages = {name: pages[name] for name in ("sign-in", "account", "webhooks")}
        found = {}
        for name, url in pages.items():
            if name != "sign-in":
                await page.goto(url)
            results = await axe.run(page, options=options)
            found[name] = [v["id"] for v in results.response["violations"]]
        await page.goto(f"{console}/accounts/{user}")
        await page.get_by_label("Amount (credits)").fill("1")
        await page.get_by_role("button", name="Grant…").click()
        found["confirm"] = [
            v["id"] for v in (await axe.run(page, options=options)).response["violations"]
        ]
        assert found == {name: [] for name in found}, (phone, found)
        await shoot(page, tmp_path, "confirm-grant-phone" if phone else "confirm-grant-desktop")
        await page.context.close()
