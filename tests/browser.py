"""Real Chromium for the web app's tests: Debian's `chromium` package driven by Playwright.

Playwright's own browser download is never used (it cannot run here and would not be the browser
users have); the tests launch the system Chromium by path. A missing Chromium fails the tests with
the command that installs it: browser tests never skip silently.

    with chromium() as browser:
        page = browser.new_page()
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("HALO_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# Headless, and none of Chromium's own network traffic (update checks, sync, field trials): this
# machine's network is closed and each refused connection would slow the browser down.
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-dev-shm-usage",
]


@contextmanager
def chromium() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"Chromium is not installed at {CHROMIUM}: install Debian's package (as root: "
            "apt-get install -y chromium) or set HALO_CHROMIUM to a Chromium binary",
            pytrace=False,
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()
