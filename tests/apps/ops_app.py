"""The app of the operator CLI tests (tests/test_cli_ops.py): a function with a step,
one that fails, one that waits for an event, a limited cron function.
Env: CF_BROKER, CF_STORE, CF_QUEUE."""

from __future__ import annotations

import os

from celery import Celery

from celeryflow import Concurrency, Flow, cron, event

app = Celery("ops_app", broker=os.environ["CF_BROKER"])
app.conf.task_default_queue = os.environ["CF_QUEUE"]
app.conf.broker_connection_retry_on_startup = True
app.conf.broker_heartbeat = 0
flow = Flow(
    app,
    store=os.environ["CF_STORE"],
    auto_migrate=True,
    retry_base="50ms",
    reconcile_interval="1s",
    redeliver_after="5s",
)


@flow.function(id="ops-greet", trigger=event("ops/greet"))
def greet(ctx):  # type: ignore[no-untyped-def]
    return ctx.step.run("hello", lambda: f"hi {ctx.event.data['name']}")


@flow.function(id="ops-fail", trigger=event("ops/fail"), retries=0)
def fail(ctx):  # type: ignore[no-untyped-def]
    raise ValueError(f"boom {ctx.event.data.get('n')}")


@flow.function(id="ops-wait", trigger=event("ops/wait"))
def wait(ctx):  # type: ignore[no-untyped-def]
    return ctx.step.wait_for_event("reply", event="ops/reply", match="data.k", timeout="1h")


@flow.function(id="ops-yearly", trigger=cron("0 0 1 1 *"), concurrency=Concurrency(limit=2))
def yearly(ctx):  # type: ignore[no-untyped-def]
    return None
