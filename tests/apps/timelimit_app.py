"""A Celery app whose own tasks have a short app-wide time limit, for the test of
``Flow(run_time_limit=...)``: CF_BROKER, CF_STORE, CF_QUEUE, CF_RUN_TIME_LIMIT."""

from __future__ import annotations

import os
import time

from celery import Celery

from celeryflow import Flow, event

app = Celery("timelimit_app", broker=os.environ["CF_BROKER"])
app.conf.task_default_queue = os.environ["CF_QUEUE"]
app.conf.broker_connection_retry_on_startup = True
# The project's limits for its own quick tasks: far shorter than a run's steps.
app.conf.task_soft_time_limit = 1
app.conf.task_time_limit = 2
flow = Flow(
    app,
    store=os.environ["CF_STORE"],
    auto_migrate=True,
    run_time_limit=os.environ.get("CF_RUN_TIME_LIMIT") or None,
    reconcile_interval="1s",
)


def slow() -> str:
    time.sleep(3)
    return "done"


@flow.function(id="long", trigger=event("t/long"), retries=0)
def long(ctx):  # type: ignore[no-untyped-def]
    return ctx.step.run("work", slow)
