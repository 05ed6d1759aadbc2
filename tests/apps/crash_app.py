"""A Celery app for subprocess-worker tests, configured by environment variables:
CF_BROKER, CF_STORE, CF_QUEUE, CF_JOURNAL (a file each step appends a line to)."""

from __future__ import annotations

import os
import time

from celery import Celery

from celeryflow import Flow, event

app = Celery("crash_app", broker=os.environ["CF_BROKER"])
app.conf.task_default_queue = os.environ["CF_QUEUE"]
app.conf.broker_connection_retry_on_startup = True
# Default lease and reconcile settings on purpose: recovery "within 60 s by default".
flow = Flow(app, store=os.environ["CF_STORE"], auto_migrate=True)
JOURNAL = os.environ["CF_JOURNAL"]


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
        time.sleep(120)  # the test kills the worker here
    note("two-end")
    return "two"


@flow.function(id="crashy", trigger=event("t/crash"))
def crashy(ctx):  # type: ignore[no-untyped-def]
    ctx.step.run("one", note, "one")
    ctx.step.run("two", slow_step)
    ctx.step.run("three", note, "three")
    return journal()
