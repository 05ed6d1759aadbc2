"""Runs for the prefork re-fork test: every step body notes its process and the names
of that process's threads. Env: CF_BROKER, CF_STORE, CF_QUEUE, CF_JOURNAL (one line
per body: ``run_id step pid ppid thread,names``)."""

from __future__ import annotations

import os
import threading

from celery import Celery

from celeryflow import Flow, event

app = Celery("forks_app", broker=os.environ["CF_BROKER"])
app.conf.task_default_queue = os.environ["CF_QUEUE"]
app.conf.broker_connection_retry_on_startup = True
app.conf.worker_prefetch_multiplier = 1
# A busy reconciler (a pass every 100 ms, sleepers rung with an ETA) while billiard
# forks a new child after every task.
flow = Flow(
    app,
    store=os.environ["CF_STORE"],
    auto_migrate=True,
    reconcile_interval="100ms",
    redeliver_after="2s",
)
JOURNAL = os.environ["CF_JOURNAL"]


def note(run_id: str, step: str) -> str:
    names = ",".join(sorted(t.name for t in threading.enumerate()))
    with open(JOURNAL, "a") as handle:  # one short O_APPEND write: atomic
        handle.write(f"{run_id} {step} {os.getpid()} {os.getppid()} {names}\n")
    return step


@flow.function(id="forked", trigger=event("t/forked"))
def forked(ctx):  # type: ignore[no-untyped-def]
    ctx.step.run("a", note, ctx.run_id, "a")
    ctx.step.sleep("nap", "200ms")
    ctx.step.run("b", note, ctx.run_id, "b")
    return ctx.event.data["n"]
