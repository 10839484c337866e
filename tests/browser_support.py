"""Headless Chromium for browser tests, driven by Playwright (the `playwright` package of the test extra).

The browser is Debian's Chromium (`scripts/install_chromium.sh`; `CHROMIUM_PATH` overrides /usr/bin/chromium):
Playwright's own browser downloads (`playwright install`) are never used. Usage::

    from tests.browser_support import ErrorCollector, browser_page, save_screenshot

    def test_home(tmp_path):
        with browser_page(base_url="http://127.0.0.1:3000", failure_screenshot=tmp_path / "fail.png") as page:
            errors = ErrorCollector(page)
            page.goto("/")
            page.get_by_text("Welcome").wait_for()
            save_screenshot(page, tmp_path / "home.png")
            errors.assert_none(ignore=[r"favicon"])

Without Chromium or Playwright a test skips, except under CI=true, where it fails: CI must really run it.
Requests to hosts other than the loopback are aborted (net::ERR_BLOCKED_BY_CLIENT): tests reach only local
servers, and a page's telemetry or CDN call cannot slow them down; ErrorCollector ignores those aborts.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import pytest

DEFAULT_CHROMIUM = "/usr/bin/chromium"
DEFAULT_TIMEOUT_MS = 20_000  # per action / wait / navigation; a cold page of a local dev server fits well inside
# needed as root in a container (no user namespaces for the sandbox, a small /dev/shm) and with no GPU
LAUNCH_ARGS = ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"]
# any http(s) URL whose host is not 127.0.0.1, localhost or [::1]
EXTERNAL_URL = re.compile(r"^https?://(?!(127\.0\.0\.1|localhost|\[::1\])(:\d+)?(/|$))")
BLOCKED = "net::ERR_BLOCKED_BY_CLIENT"


def _unavailable(reason: str) -> None:
    """Skip the test, or fail it when CI=true (a CI run must not silently skip its browser tests)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: browser tests must run)", pytrace=False)
    pytest.skip(reason)


def chromium_path() -> str:
    """The Chromium executable (`CHROMIUM_PATH` or /usr/bin/chromium); skips the test (fails under CI) when absent."""
    path = os.environ.get("CHROMIUM_PATH") or DEFAULT_CHROMIUM
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        _unavailable(f"Chromium not found at {path}: run scripts/install_chromium.sh")
    return path


@contextmanager
def browser_page(*, base_url: str | None = None, timeout_ms: int = DEFAULT_TIMEOUT_MS,
                 viewport: tuple[int, int] = (1440, 900), failure_screenshot: str | Path | None = None) -> Iterator:
    """Launch headless Chromium and yield a fresh Playwright `Page`; everything is closed on exit.

    `base_url` lets `page.goto("/path")` take relative paths. When the block raises and `failure_screenshot`
    is given, the page is saved there first, to see what the browser showed.
    """
    executable = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -e '.[test]')")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=LAUNCH_ARGS)
        try:
            context = browser.new_context(base_url=base_url, viewport={"width": viewport[0], "height": viewport[1]})
            context.set_default_timeout(timeout_ms)
            context.set_default_navigation_timeout(timeout_ms)
            context.route(EXTERNAL_URL, lambda route: route.abort("blockedbyclient"))
            page = context.new_page()
            try:
                yield page
            except BaseException:
                if failure_screenshot is not None:
                    try:
                        save_screenshot(page, failure_screenshot)
                    except Exception:  # the page may be gone; keep the test's own error
                        pass
                raise
        finally:
            browser.close()


class ErrorCollector:
    """Records the page's console errors and uncaught exceptions from the moment it is created
    (not the aborts of external requests that browser_page blocks)."""

    def __init__(self, page) -> None:
        self.errors: list[str] = []

        def on_console(msg) -> None:
            if msg.type == "error" and BLOCKED not in msg.text:
                self.errors.append(f"console: {msg.text}")

        page.on("console", on_console)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))

    def unexpected(self, ignore: Iterable[str] = ()) -> list[str]:
        """The errors that match none of the `ignore` regular expressions."""
        patterns = [re.compile(p) for p in ignore]
        return [e for e in self.errors if not any(p.search(e) for p in patterns)]

    def assert_none(self, ignore: Iterable[str] = ()) -> None:
        found = self.unexpected(ignore)
        assert not found, "errors in the browser:\n" + "\n".join(found)


def save_screenshot(page, path: str | Path, *, full_page: bool = True) -> Path:
    """Save a PNG of the page at `path` (parent folders are made) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=full_page)
    return path
