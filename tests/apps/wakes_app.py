"""A sleeper for the held wake-up tests (tests/test_held_wakes.py), with a reconciler
too far away to wake it in a test's time: only its held wake-up, or that wake-up
handed to the broker, can. Env: CF_BROKER, CF_STORE, CF_QUEUE."""

from __future__ import annotations

import os

from celery import Celery

from celeryflow import Flow, event

app = Celery("wakes_app", broker=os.environ["CF_BROKER"])
app.conf.task_default_queue = os.environ["CF_QUEUE"]
app.conf.broker_connection_retry_on_startup = True
flow = Flow(
    app,
    store=os.environ["CF_STORE"],
    auto_migrate=True,
    reconcile_interval="60s",
    redeliver_after="600s",
)


@flow.function(id="napper", trigger=event("t/nap"))
def napper(ctx):  # type: ignore[no-untyped-def]
    ctx.step.sleep("nap", ctx.event.data["seconds"])
    return "woke"
