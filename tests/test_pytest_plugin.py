"""celeryflow's pytest plugin, as a project's test suite uses it (a pytest session in a
subprocess, with the plugin loaded from its pytest11 entry point): a module-level
Flow gets a fresh store per test, the developer's store is neither read nor written,
and a worker runs for a test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

INNER = """
import threading

import pytest
from celery import Celery

from celeryflow import Event, Flow, event
from celeryflow.testing import wait_for_run

DEV_STORE = "sqlite:///{dev}"
app = Celery("plugin-inner")
app.conf.worker_hijack_root_logger = False
flow = Flow(app, store=DEV_STORE)  # the developer's store, as in the project's module


@flow.function(id="hello", trigger=event("t/hello"))
def hello(ctx):
    return ctx.step.run("where", lambda: threading.current_thread().name)


def test_0_the_developer_store_has_an_event():
    flow.send(Event(name="t/hello", id="same-id"))
    assert len(flow.list_runs(event_id="same-id")) == 1


def test_1_isolated_store_is_fresh(celeryflow_isolate, celeryflow_store):
    assert celeryflow_isolate(flow) is flow
    assert flow.store.url == celeryflow_store
    assert flow.list_runs() == []
    flow.send(Event(name="t/hello", id="same-id"))  # not deduplicated against the dev one
    assert len(flow.list_runs(event_id="same-id")) == 1


def test_2_each_test_gets_its_own(celeryflow_isolate):
    celeryflow_isolate(flow)
    assert flow.list_runs() == []


def test_3_the_developer_store_is_back_untouched():
    assert flow.store.url == DEV_STORE
    [run] = flow.list_runs()
    assert run.event_id == "same-id"


def test_4_a_worker_for_the_test(celeryflow_isolate, celeryflow_worker):
    celeryflow_isolate(flow)
    celeryflow_worker(flow)
    [event_id] = flow.send(Event(name="t/hello"))
    run = wait_for_run(flow, event_id=event_id, timeout=60)
    assert run.status == "completed"
    assert run.output != threading.current_thread().name  # a worker thread ran it
"""


def test_plugin_isolates_stores_and_runs_a_worker(tmp_path: Path) -> None:
    (tmp_path / "dev").mkdir()
    (tmp_path / "test_inner.py").write_text(INNER.format(dev=tmp_path / "dev" / "dev.db"))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_inner.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert "5 passed" in done.stdout, done.stdout[-3000:]
