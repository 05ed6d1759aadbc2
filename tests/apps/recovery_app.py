"""A Celery app for the recovery tests (a backlog, and a run whose executor is
killed), configured by environment variables: CF_BROKER, CF_STORE, CF_QUEUE,
CF_JOURNAL (a file the victim's steps append a line to), CF_REDELIVER."""

from __future__ import annotations

import os
import time

from celery import Celery

from celeryflow import Flow, event

app = Celery("recovery_app", broker=os.environ["CF_BROKER"])
app.conf.task_default_queue = os.environ["CF_QUEUE"]
app.conf.broker_connection_retry_on_startup = True
flow = Flow(
    app,
    store=os.environ["CF_STORE"],
    auto_migrate=True,
    lease="3s",
    reconcile_interval="1s",
    redeliver_after=os.environ.get("CF_REDELIVER", "30s"),
)
JOURNAL = os.environ["CF_JOURNAL"]
BACKLOG_STEP = 0.3  # seconds: 200 runs on two processes take 30 s


def note(line: str) -> None:
    with open(JOURNAL, "a") as handle:
        handle.write(f"{line} {os.getpid()}\n")


def journal() -> list[str]:
    with open(JOURNAL) as handle:
        return [line.split()[0] for line in handle]


def slow_step() -> str:
    first_try = "two-start" not in journal()
    note("two-start")
    if first_try:
        time.sleep(120)  # the test kills the process here
    note("two-end")
    return "two"


@flow.function(id="victim", trigger=event("t/victim"))
def victim(ctx):  # type: ignore[no-untyped-def]
    ctx.step.run("one", note, "one")
    ctx.step.run("two", slow_step)
    return journal()


@flow.function(id="backlog", trigger=event("t/backlog"))
def backlog(ctx):  # type: ignore[no-untyped-def]
    ctx.step.run("work", time.sleep, BACKLOG_STEP)
