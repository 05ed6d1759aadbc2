"""The dashboard in a real browser (headless Chromium, selenium) against a real
worker: live steps, Cancel and Replay, the send form, filters and paging, pause and
resume, inert event data. Each test saves a screenshot of its page in
docs/screenshots/ (the README shows them)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import pytest
from browser import chromium, eventually, screenshot, served
from flowkit import make_flow
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select
from services import Stack

from celeryflow import Event, Flow, cron, event
from celeryflow.dashboard.asgi import dashboard_app
from celeryflow.runs import RunStatus
from celeryflow.testing import wait_for_run, worker

# the embedded stack for most; a run's live page also on Redis + PostgreSQL
EMBEDDED = pytest.mark.parametrize("stack", ["embedded"], indirect=True)

T = TypeVar("T")
XSS_NAME = 'x/<script>window.__xss=1</script>" onmouseover="window.__xss=2'
XSS_DATA = {
    "html": "<script>window.__xss=3</script><img src=x onerror=window.__xss=4>",
    "attr": '" onmouseover="window.__xss=5" x="',
    "close": "</pre><script>window.__xss=6</script>",
}


@dataclass
class Dash:
    flow: Flow
    url: str
    browser: webdriver.Chrome
    gate: threading.Event  # the "slow" function's steps wait for it

    def open(self, path: str) -> None:
        self.browser.get(self.url + path)

    # The live parts are replaced while we look: an element found may be gone when
    # read, so each read is retried until it holds still.
    def text(self, css: str) -> str:
        return steady(lambda: str(self.browser.find_element(By.CSS_SELECTOR, css).text))

    def count(self, css: str) -> int:
        return steady(lambda: len(self.browser.find_elements(By.CSS_SELECTOR, css)))

    def rows(self, css: str, attribute: str) -> list[tuple[str, str]]:
        """(attribute, text) of each element matching ``css``."""
        return steady(
            lambda: [
                (str(e.get_attribute(attribute)), str(e.text))
                for e in self.browser.find_elements(By.CSS_SELECTOR, css)
            ]
        )

    def click(self, css: str) -> None:
        steady(lambda: self.browser.find_element(By.CSS_SELECTOR, css).click())


def _replaced(exc: WebDriverException) -> bool:
    """The element was replaced under the read (a live part of the page refreshed):
    Selenium's stale element, or Chromium's own words for it."""
    return isinstance(exc, StaleElementReferenceException) or (
        "does not belong to the document" in str(exc)
    )


def steady(read: Callable[[], T]) -> T:
    for _ in range(50):
        try:
            return read()
        except WebDriverException as exc:
            if not _replaced(exc):
                raise
            time.sleep(0.05)
    return read()


def define(flow: Flow, gate: threading.Event) -> None:
    @flow.function(id="slow", trigger=event("dash/slow"), retries=0)
    def slow(ctx: Any) -> dict[str, int]:
        total = 0
        for i in range(3):
            # each step waits until the test has seen the page, so the page is seen
            # mid-run whatever the machine's speed
            total += ctx.step.run(f"part-{i}", lambda i=i: gate.wait(30) and i)
            gate.clear()
        return {"total": total}

    @flow.function(id="napper", trigger=event("dash/nap"))
    def napper(ctx: Any) -> str:
        ctx.step.run("before", lambda: "ok")
        ctx.step.sleep("nap", "1h")
        return "woke"

    @flow.function(id="tick", trigger=event("dash/tick"))
    def tick(ctx: Any) -> int:
        return int(ctx.event.data.get("n", 0))

    @flow.function(id="boom", trigger=event("dash/boom"), retries=0)
    def boom(ctx: Any) -> None:
        ctx.step.run("explode", lambda: 1 / 0)

    @flow.function(id="waiter", trigger=event("dash/order"))
    def waiter(ctx: Any) -> Any:
        return ctx.step.wait_for_event(
            "paid", event="dash/paid", match="data.order_id", timeout="1h"
        )

    @flow.function(id="nightly", trigger=cron("0 3 * * *", tz="Europe/Berlin"), retries=1)
    def nightly(ctx: Any) -> None:
        return None

    @flow.function(
        id="echo", trigger=[event("dash/test"), event("dash/tick"), event("x/*")], retries=0
    )
    def echo(ctx: Any) -> dict[str, Any]:
        return dict(ctx.event.data)


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    with chromium() as driver:
        yield driver


@pytest.fixture
def dash(stack: Stack, browser: webdriver.Chrome) -> Iterator[Dash]:
    flow = make_flow(stack)
    gate = threading.Event()
    define(flow, gate)
    app = dashboard_app(flow, poll_seconds=0.3, page_size=5)
    with worker(flow, concurrency=4), served(app) as url:
        yield Dash(flow, url, browser, gate)
        gate.set()


def ended(flow: Flow, event_id: str, function_id: str) -> Any:
    """The run of ``function_id`` that ``event_id`` started, once it has ended."""

    def probe() -> Any:
        return next(
            (
                r
                for r in flow.list_runs(event_id=event_id, function_id=function_id)
                if r.status in ("completed", "failed", "cancelled", "skipped")
            ),
            None,
        )

    return eventually(probe, what=f"the {function_id} run of {event_id}")


def status_of(flow: Flow, run_id: str) -> RunStatus:
    return flow.get_run(run_id).status


@pytest.mark.parametrize("stack", ["embedded", "redis-postgres"], indirect=True)
def test_a_runs_page_shows_its_steps_while_the_worker_runs_them(dash: Dash) -> None:
    [event_id] = dash.flow.send(Event(name="dash/slow"))
    run_id = eventually(lambda: dash.flow.list_runs(event_id=event_id), what="its run")[0].id
    dash.open(f"/runs/{run_id}")
    seen = []
    for done in (1, 2):
        # the page (polling) shows the steps recorded so far while the run goes on
        dash.gate.set()
        eventually(
            lambda done=done: dash.count("tr.step-completed") >= done,
            what=f"{done} completed step(s) on the page",
        )
        seen.append((dash.count("tr.step"), dash.text("#run-status")))
    assert all(status not in ("completed", "failed") for _, status in seen), seen
    dash.gate.set()
    eventually(lambda: dash.text("#run-status") == "completed", what="completed on the page")
    assert dash.count("tr.step-completed") == 3
    assert '"total": 1' in dash.text("#run-output") or '"total": 3' in dash.text("#run-output")
    assert wait_for_run(dash.flow, event_id=event_id).status == RunStatus.COMPLETED
    # polling stopped at the end: the live region carries no poll URL any more
    assert not dash.browser.find_element(By.ID, "run-live").get_attribute("data-poll")
    screenshot(dash.browser, "run")


@EMBEDDED
def test_cancel_and_replay_in_the_page_change_the_store(dash: Dash) -> None:
    [event_id] = dash.flow.send(Event(name="dash/nap", data={"who": "ann"}))
    run = eventually(
        lambda: next(
            (r for r in dash.flow.list_runs(event_id=event_id) if r.status == "sleeping"), None
        ),
        what="a sleeping run",
    )
    dash.open(f"/runs/{run.id}")
    assert dash.text("#run-status") == "sleeping"
    assert "wakes" in dash.text("tr[data-step='nap']")
    dash.click("#cancel")
    eventually(lambda: dash.text("#run-status") == "cancelled", what="cancelled on the page")
    assert status_of(dash.flow, run.id) == RunStatus.CANCELLED
    dash.click("#replay")
    eventually(lambda: run.id not in dash.browser.current_url, what="the new run's page")
    new_id = dash.browser.current_url.rpartition("/runs/")[2].partition("?")[0]
    assert "Replayed" in dash.text(".notice")
    replayed = dash.flow.get_run(new_id)
    assert replayed.function_id == "napper" and replayed.id != run.id
    assert [e.data for e in replayed.events] == [{"who": "ann"}]
    eventually(lambda: status_of(dash.flow, new_id) == RunStatus.SLEEPING, what="replay sleeps")
    dash.flow.cancel(new_id)


@EMBEDDED
def test_a_test_event_sent_from_the_form_starts_a_run(dash: Dash) -> None:
    dash.open("/events")
    form = dash.browser.find_element(By.ID, "send-event")
    form.find_element(By.NAME, "name").send_keys("dash/test")
    data = form.find_element(By.NAME, "data")
    data.clear()
    data.send_keys('{"n": 41, "who": "form"}')
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    eventually(lambda: "Event sent" in dash.text(".notice"), what="the sent notice")
    event_id = dash.browser.find_element(By.CSS_SELECTOR, "tr.highlight").get_attribute(
        "data-event-id"
    )
    run = wait_for_run(dash.flow, event_id=event_id)
    assert run.function_id == "echo" and run.output == {"n": 41, "who": "form"}
    dash.open("/events")
    row = dash.browser.find_element(By.CSS_SELECTOR, f"tr[data-event-id='{event_id}']")
    assert run.id[:8] in row.text and '"who": "form"' in row.text
    # re-send: the same name and data as a new event, which starts a new run
    row.find_element(By.CSS_SELECTOR, "button.resend").click()
    eventually(lambda: "Event sent" in dash.text(".notice"), what="re-sent")
    again = dash.browser.find_element(By.CSS_SELECTOR, "tr.highlight").get_attribute(
        "data-event-id"
    )
    assert again != event_id
    assert wait_for_run(dash.flow, event_id=again).output == {"n": 41, "who": "form"}
    # bad JSON is refused with the reason, and records nothing
    form = dash.browser.find_element(By.ID, "send-event")
    form.find_element(By.NAME, "name").send_keys("dash/test")
    data = form.find_element(By.NAME, "data")
    data.clear()
    data.send_keys("{not json")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    eventually(lambda: "data is not JSON" in dash.text("#form-error"), what="the form's error")
    dash.open("/events")
    screenshot(dash.browser, "events")


@EMBEDDED
def test_filters_and_keyset_paging(dash: Dash) -> None:
    ids = []
    for n in range(12):
        [event_id] = dash.flow.send(Event(name="dash/tick", data={"n": n}))
        ids.append(ended(dash.flow, event_id, "tick").id)
    [boom_event] = dash.flow.send(Event(name="dash/boom"))
    failed = wait_for_run(dash.flow, event_id=boom_event)
    assert failed.status == RunStatus.FAILED

    dash.open("/runs")
    dash.browser.find_element(By.NAME, "function").send_keys("tick")
    dash.click("#run-filters button[type=submit]")
    pages: list[list[str]] = []
    while True:
        rows = dash.rows("tr.run-row", "data-run-id")
        pages.append([run_id for run_id, _ in rows])
        assert all("tick" in text for _, text in rows)
        if not dash.count("#older"):
            break
        dash.click("#older")
    assert [len(p) for p in pages] == [5, 5, 2]
    assert [i for p in pages for i in p] == list(reversed(ids))  # newest first, each once

    def choose_failed() -> None:
        Select(dash.browser.find_element(By.NAME, "status")).select_by_value("failed")

    def failed_only() -> bool:
        return [run_id for run_id, _ in dash.rows("tr.run-row", "data-run-id")] == [failed.id]

    # The page's live part may re-render while the form is filled, and the click does
    # not wait for the next page: fill and submit again (up to 3 times) until it shows.
    for attempt in range(3):
        steady(choose_failed)
        steady(lambda: dash.browser.find_element(By.NAME, "function").clear())
        dash.click("#run-filters button[type=submit]")
        try:
            eventually(failed_only, timeout=10, what="the failed run alone")
            break
        except AssertionError:
            if attempt == 2:
                raise
    rows = dash.rows("tr.run-row", "data-run-id")
    assert "ZeroDivisionError" in rows[0][1]
    dash.click("tr.run-row a")
    assert "ZeroDivisionError" in dash.text("#run-error")
    assert "Traceback" in dash.text("pre.traceback")

    dash.open(f"/runs?event_id={boom_event}")
    assert dash.count("tr.run-row") == 1
    dash.open("/runs?event=dash/tick&status=completed")
    assert dash.count("tr.run-row") == 5 and dash.count("#older") == 1
    first = dash.flow.get_run(ids[0]).created_at
    until = (first - timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S")
    dash.open(f"/runs?function=tick&until={until}")
    assert dash.count("tr.run-row") == 0 and "No runs match" in dash.text("#run-rows")
    since = first.strftime("%Y-%m-%dT%H:%M:%S")
    dash.open(f"/runs?function=tick&since={since}")
    assert dash.count("tr.run-row") == 5
    dash.open("/runs")
    screenshot(dash.browser, "runs")


@EMBEDDED
def test_a_function_paused_in_the_page_starts_nothing_until_resumed(dash: Dash) -> None:
    # a few ended runs, so the page has counts, a failure rate and durations to show
    for name in ("dash/tick", "dash/tick", "dash/boom"):
        [sent] = dash.flow.send(Event(name=name, data={"n": 3}))
        ended(dash.flow, sent, "boom" if name == "dash/boom" else "tick")
    dash.open("/functions")
    boom = dash.text("tr[data-function-id='boom']")
    assert "failed 1" in boom and "100.0 %" in boom
    row = "tr[data-function-id='tick']"
    dash.click(f"{row} button.pause")
    eventually(lambda: "Paused" in dash.text(".notice"), what="the paused notice")
    assert "paused" in dash.text(row)
    assert "tick" in dash.flow.store.paused_functions()
    # "echo" takes dash/tick too: its run ending shows the event was handled
    [event_id] = dash.flow.send(Event(name="dash/tick", data={"n": 1}))
    ended(dash.flow, event_id, "echo")
    assert [r.function_id for r in dash.flow.list_runs(event_id=event_id)] == ["echo"]
    screenshot(dash.browser, "functions")
    dash.click(f"{row} button.resume")
    eventually(lambda: "Resumed" in dash.text(".notice"), what="the resumed notice")
    assert "tick" not in dash.flow.store.paused_functions()
    [event_id] = dash.flow.send(Event(name="dash/tick", data={"n": 2}))
    started = eventually(
        lambda: {r.function_id for r in dash.flow.list_runs(event_id=event_id)} == {"tick", "echo"},
        what="a tick run after resume",
    )
    assert started
    # triggers, next cron slots and flow control are listed
    nightly = dash.text("tr[data-function-id='nightly']")
    assert "0 3 * * *" in nightly and "Europe/Berlin" in nightly and "next:" in nightly


@EMBEDDED
def test_event_data_with_script_and_attribute_breakers_renders_inert(dash: Dash) -> None:
    [event_id] = dash.flow.send(Event(name=XSS_NAME, data=XSS_DATA))
    run = ended(dash.flow, event_id, "echo")  # "echo" takes x/*
    assert run.output == XSS_DATA
    for path in (f"/runs/{run.id}", "/events", "/runs", f"/runs?event={XSS_NAME}"):
        dash.open(path)
        # hover every element that could carry an injected handler
        for element in dash.browser.find_elements(By.CSS_SELECTOR, "pre, td, p, span")[:20]:
            try:
                ActionChains(dash.browser).move_to_element(element).perform()
            except Exception:
                pass
        assert dash.browser.execute_script("return window.__xss === undefined") is True, path
        # our one external script, no other; no image from the data
        assert dash.browser.execute_script("return document.scripts.length") == 1, path
        assert dash.count("img") == 0, path
    dash.open(f"/runs/{run.id}")
    payload = dash.text("#event-payload")
    assert "<script>window.__xss=3</script>" in payload  # shown as text
    assert 'onmouseover=\\"window.__xss=5\\"' in payload  # JSON's escaped quotes
    assert XSS_NAME in dash.browser.page_source.replace("&lt;", "<").replace("&gt;", ">")
    # the same through the send form
    dash.open("/events")
    form = dash.browser.find_element(By.ID, "send-event")
    form.find_element(By.NAME, "name").send_keys("dash/" + XSS_DATA["attr"])
    data = form.find_element(By.NAME, "data")
    data.clear()
    data.send_keys('{"x": "</textarea><script>window.__xss=7</script>"}')
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    eventually(lambda: "Event sent" in dash.text(".notice"), what="sent")
    assert dash.browser.execute_script("return window.__xss === undefined") is True


@EMBEDDED
def test_waiting_runs_and_the_tour_of_pages(dash: Dash) -> None:
    [order] = dash.flow.send(Event(name="dash/order", data={"order_id": "o-17"}))
    eventually(
        lambda: any(r.status == "waiting" for r in dash.flow.list_runs(event_id=order)),
        what="a waiting run",
    )
    dash.open("/waiting")
    row = dash.text("tr.wait-row")
    assert "dash/paid" in row and "data.order_id" in row and '"o-17"' in row
    screenshot(dash.browser, "waiting")
    dash.flow.send(Event(name="dash/paid", data={"order_id": "o-17"}))
    run = wait_for_run(dash.flow, event_id=order)
    assert run.status == RunStatus.COMPLETED
    dash.open("/waiting")
    assert dash.count("tr.wait-row") == 0
