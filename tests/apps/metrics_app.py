"""A worker with Prometheus metrics, for tests/test_metrics.py: the PrometheusHook, and
the metrics served from the worker's main process.
Env: CF_BROKER, CF_QUEUE, CF_STORE, CF_MARKERS, CF_METRICS_PORT, PROMETHEUS_MULTIPROC_DIR."""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery
from celery.signals import worker_init

from celeryflow import Flow, NonRetriableError, Timeouts, event
from celeryflow.metrics import PrometheusHook, start_http_server

app = Celery("metrics_app", broker=os.environ["CF_BROKER"])
app.conf.task_default_queue = os.environ["CF_QUEUE"]
app.conf.broker_connection_retry_on_startup = True
flow = Flow(
    app,
    store=os.environ["CF_STORE"],
    hooks=[PrometheusHook()],
    auto_migrate=True,
    reconcile_interval="1s",
    retry_base="50ms",
)


@worker_init.connect
def serve_metrics(**_: Any) -> None:
    # the worker's main process, before the pool forks: one endpoint per worker
    start_http_server(int(os.environ["CF_METRICS_PORT"]), flow, addr="127.0.0.1")


def flaky(marker: str) -> str:
    # fails on its first attempt (the marker file does not exist yet), then succeeds
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("first attempt fails")
    return "ok"


@flow.function(id="metered", trigger=event("metrics/metered"))
def metered(ctx):  # type: ignore[no-untyped-def]
    ctx.step.run("first", lambda: 1)
    marker = os.path.join(os.environ["CF_MARKERS"], ctx.event.data["tag"])
    ctx.step.run("flaky", flaky, marker)
    return "done"


@flow.function(id="doomed", trigger=event("metrics/doomed"), retries=0)
def doomed(ctx):  # type: ignore[no-untyped-def]
    raise NonRetriableError("no")


@flow.function(id="napper", trigger=event("metrics/napper"))
def napper(ctx):  # type: ignore[no-untyped-def]
    ctx.step.sleep("nap", "1h")


# tests/test_metrics.py, ends no execution sees: cancelled while parked (by the test
# process, by Timeouts), while running, and flow-control skips decided in a worker.
@flow.function(id="dozer", trigger=event("metrics/dozer"))
def dozer(ctx):  # type: ignore[no-untyped-def]
    ctx.step.sleep("nap", "1h")


@flow.function(id="bounded", trigger=event("metrics/bounded"), timeouts=Timeouts(finish="2s"))
def bounded(ctx):  # type: ignore[no-untyped-def]
    ctx.step.sleep("nap", "1h")


def until_marker(name: str) -> str:
    marker = os.path.join(os.environ["CF_MARKERS"], name)
    open(marker + ".started", "w").close()
    while not os.path.exists(marker):
        time.sleep(0.05)
    return "released"


@flow.function(id="busy", trigger=event("metrics/busy"))
def busy(ctx):  # type: ignore[no-untyped-def]
    ctx.step.run("hold", until_marker, "busy")
    ctx.step.run("after", lambda: 1)


@flow.function(id="fanout", trigger=event("metrics/fanout"))
def fanout(ctx):  # type: ignore[no-untyped-def]
    for n in range(3):
        ctx.step.send_event(f"send-{n}", {"name": "metrics/once", "data": {"k": "same"}})


@flow.function(id="once", trigger=event("metrics/once"), idempotency="event.data.k")
def once(ctx):  # type: ignore[no-untyped-def]
    return "once"
