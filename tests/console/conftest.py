"""Fixtures of the console's tests: the console in front of the module's ledger, and one
headless Chromium per module (Debian's, installed when missing)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
from creditwallet.client.console.app import serving
from creditwallet.client.console.config import ConsoleConfig
from creditwallet.core.settings import Secret
from playwright.async_api import Browser, async_playwright

from tests import harness
from tests.console import kit


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def console(ledger: harness.Ledger) -> AsyncIterator[str]:
    """The operators' console in front of the module's ledger: its base URL."""
    config = ConsoleConfig(
        host="127.0.0.1",
        port=0,
        ledger_target=ledger.target,
        admin_token=Secret(harness.TOKENS["admin"]),
    )
    async with serving(config) as (_, port):
        yield f"http://127.0.0.1:{port}"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    """One headless Chromium (Debian's) per module; each test opens its own contexts."""
    executable = kit.ensure_chromium()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(executable), args=kit.CHROMIUM_ARGS
        )
        yield launched
        await launched.close()
