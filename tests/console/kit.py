"""What the console's browser tests share: Chromium (Debian's, installed when missing), the
console served in the test's event loop, and helpers to sign in and to take screenshots.

Screenshots go under each test's temporary folder, and the latest of each name is copied
to docs/screenshots/, which the console's documentation shows.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Final

from playwright.async_api import Browser, BrowserContext, Dialog, Page, ViewportSize

from tests import harness

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
SCREENSHOTS: Final = REPO_ROOT / "docs" / "screenshots"
CHROMIUM: Final = Path("/usr/bin/chromium")
CHROMIUM_ARGS: Final = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
INSTALL_TIMEOUT_SECONDS: Final = 900
DESKTOP: Final = ViewportSize(width=1280, height=900)
PHONE: Final = ViewportSize(width=390, height=844)
ADMIN_TOKEN: Final = harness.TOKENS["admin"]


def ensure_chromium() -> Path:
    """Debian's chromium, installed with apt-get when missing (as root, or through sudo)."""
    if CHROMIUM.exists():
        return CHROMIUM
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        subprocess.run(
            [*sudo, *command],
            check=True,
            env=env,
            timeout=INSTALL_TIMEOUT_SECONDS,
            stdout=subprocess.DEVNULL,
        )
    assert CHROMIUM.exists(), "apt-get installed chromium but /usr/bin/chromium is not there"
    return CHROMIUM


async def new_page(browser: Browser, *, phone: bool = False) -> tuple[BrowserContext, Page]:
    """A fresh context (no cookies) and its page; every dialog is recorded, then dismissed."""
    context = await browser.new_context(viewport=PHONE if phone else DESKTOP)
    page = await context.new_page()
    dialogs: list[str] = []

    async def record(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        await dialog.dismiss()

    page.on("dialog", record)
    page.dialogs = dialogs  # type: ignore[attr-defined]
    return context, page


def dialogs_of(page: Page) -> list[str]:
    found: list[str] = page.dialogs  # type: ignore[attr-defined]
    return found


async def sign_in(page: Page, base_url: str, token: str = ADMIN_TOKEN) -> None:
    await page.goto(f"{base_url}/sign-in")
    await page.get_by_label("Admin token").fill(token)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_load_state()


async def shoot(page: Page, tmp_path: Path, name: str) -> Path:
    """A full-page screenshot under the test's folder, kept as docs/screenshots/<name>.png."""
    path = tmp_path / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, SCREENSHOTS / f"{name}.png")
    return path
