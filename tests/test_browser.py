"""The quickstart notebook in a real JupyterLab, in a real headless Chromium (Playwright).

Runs all cells as a user would (Run > Run All Cells), then checks what is on
screen: the job widget renders, its progress bar reaches 100 % and its status
ends as finished, and the failing job shows the worker's traceback. Screenshots
in the light and the dark theme are saved to tests/artifacts/ (git-ignored) for
a person to look at; their paths are printed.

Needs Debian's ``chromium`` (CI's ``.ci/run`` installs it; Playwright's own
browser download is never used). Outside CI a missing chromium skips.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from chromium import ARGS, ARTIFACTS, CHROMIUM, require_chromium
from lab_server import jupyterlab

ROOT = Path(__file__).parent.parent
TOKEN = "fsq-browser-test"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[str]:
    """A JupyterLab server serving a copy of notebooks/ (its base URL); stopped after the test."""
    require_chromium()
    work = tmp_path / "lab"
    shutil.copytree(ROOT / "notebooks", work)
    with jupyterlab(tmp_path, work, TOKEN) as base:
        yield base


def shoot(page, name: str) -> Path:  # type: ignore[no-untyped-def]
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


@pytest.mark.timeout(300)
def test_quickstart_in_jupyterlab(lab: str) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 3400})
            page.goto(f"{lab}/lab/tree/quickstart.ipynb?token={TOKEN}")
            page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]', timeout=90_000)
            notebook = page.locator(".jp-NotebookPanel")
            started = notebook.locator(".jp-InputPrompt", has_text=re.compile(r"\[(\*|\d+)\]")).first
            for attempt in range(3):
                page.get_by_role("menuitem", name="Run", exact=True).click()
                page.get_by_role("menuitem", name=re.compile(r"^Run All Cells")).click()
                try:  # on a loaded machine a click can land before the kernel takes requests
                    expect(started).to_be_visible(timeout=30_000)
                    break
                except AssertionError:
                    if attempt == 2:
                        raise

            job = notebook.locator(".fsq-job").first
            expect(job).to_be_visible(timeout=60_000)
            try:  # a look at it while it runs (progress, output tail, Cancel), if it is caught running
                job.locator('.fsq-status[data-status="started"]').wait_for(timeout=5_000)
                page.wait_for_timeout(1_200)  # the output tail is read every second
                ARTIFACTS.mkdir(exist_ok=True)
                job.screenshot(path=str(ARTIFACTS / "widget-running-light.png"))
            except PlaywrightTimeout:
                pass
            expect(job.locator('.fsq-status[data-status="finished"]')).to_be_visible(timeout=120_000)
            bar = job.locator(".widget-hprogress .progress-bar")
            expect(bar).to_have_attribute("style", re.compile(r"width: 100%"), timeout=30_000)
            failed = notebook.locator(".fsq-job", has=page.locator('.fsq-status[data-status="failed"]')).first
            expect(failed).to_be_visible(timeout=60_000)
            expect(failed).to_contain_text("ZeroDivisionError: division by zero")
            expect(failed).to_contain_text("Traceback")
            # map's group (the sweep has its own; `%fsq wait group` shows it again)
            group = notebook.locator(".fsq-group", has_text="16 / 16 done").first
            expect(group).to_be_visible(timeout=60_000)
            # The last cell has run (workers stopped) and the kernel is idle.
            expect(notebook).to_contain_text("0 local worker(s)", timeout=120_000)
            page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]', timeout=60_000)
            shots = [shoot(page, "quickstart-light.png")]
            for i, widget in enumerate((job, group, failed)):
                widget.screenshot(path=str(ARTIFACTS / f"widget-{i}-light.png"))

            page.evaluate("window.jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Dark'})")
            page.wait_for_selector('body[data-jp-theme-light="false"]', state="attached", timeout=30_000)
            page.wait_for_timeout(500)  # the theme's stylesheet applies after the attribute
            shots.append(shoot(page, "quickstart-dark.png"))
            for i, widget in enumerate((job, group, failed)):
                widget.screenshot(path=str(ARTIFACTS / f"widget-{i}-dark.png"))
            assert all(p.stat().st_size > 10_000 for p in shots)
        finally:
            browser.close()
