"""Debian's headless Chromium for the tests that look at what a user sees (never Playwright's own download)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Screenshots land here (git-ignored), for a person to look at.
ARTIFACTS = Path(__file__).parent / "artifacts"


def require_chromium() -> None:
    """Skip without chromium, except in CI, where ``.ci/run`` installs it and a missing one fails."""
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs it with apt-get")
        pytest.skip("needs Debian's chromium: apt-get install chromium")


def screenshot_html(html: str, name: str, width: int = 1000) -> Path:
    """Render ``html`` (a static view) in Chromium and save a full-page screenshot as ``ARTIFACTS/name``."""
    from playwright.sync_api import sync_playwright

    require_chromium()
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 300})
            page.set_content(f"<!doctype html><html><body>{html}</body></html>")
            page.screenshot(path=str(path), full_page=True)
        finally:
            browser.close()
    return path
