"""A real browser for the dashboard tests: Debian's headless Chromium driven by
selenium, and the dashboard served by uvicorn in a thread on a free port."""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import uvicorn
from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service as ChromeService
from services import skip_or_fail

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,860",
)

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def served(app: Any) -> Iterator[str]:
    """``app`` (ASGI) on 127.0.0.1:<free port> while the block runs; yields its URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="dashboard-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the dashboard test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


@contextmanager
def chromium() -> Iterator[webdriver.Chrome]:
    """Headless Chromium with an empty profile of its own."""
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        skip_or_fail(
            f"{CHROMIUM} or {CHROMEDRIVER} missing: apt-get install -y chromium chromium-driver"
        )
    profile = tempfile.mkdtemp(prefix="cf-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    try:
        driver = webdriver.Chrome(options=options, service=ChromeService(str(CHROMEDRIVER)))
    except WebDriverException as exc:
        shutil.rmtree(profile, ignore_errors=True)
        skip_or_fail(f"headless Chromium did not start: {exc.msg}")
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def eventually(probe: Callable[[], T | None], *, timeout: float = 30.0, what: str = "it") -> T:
    """Poll ``probe`` until truthy. DOM reads may see an element replaced meanwhile, or
    no element yet while the page after a POST's redirect is still loading."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except WebDriverException as exc:
            # replaced under the read (Chromium: "does not belong to the document"), or
            # not there yet: anything else is a real error
            gone = isinstance(exc, StaleElementReferenceException | NoSuchElementException)
            if not gone and "does not belong to the document" not in str(exc):
                raise
            last = None
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def screenshot(driver: webdriver.Chrome, name: str) -> None:
    """docs/screenshots/<name>.png, for the README."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))
