"""Flow-control functions for the two-worker tests (tests/test_flowcontrol.py).
Env: CF_BROKER, CF_STORE, CF_QUEUE. Steps return wall-clock times so the test can
check overlaps across worker processes."""

from __future__ import annotations

import os
import time

from celery import Celery

from celeryflow import (
    Batch,
    Concurrency,
    Debounce,
    Flow,
    Priority,
    Singleton,
    Throttle,
    Timeouts,
    event,
)

app = Celery("control_app", broker=os.environ["CF_BROKER"])
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


def span(seconds: float) -> dict[str, float]:
    start = time.time()
    time.sleep(seconds)
    return {"start": start, "end": time.time(), "pid": os.getpid()}


def stamp() -> float:
    return time.time()


@flow.function(
    id="limited",
    trigger=event("t/limited"),
    # a dict works wherever a config object does
    concurrency=[Concurrency(limit=2, key="event.data.customer"), {"limit": 3}],
)
def limited(ctx):  # type: ignore[no-untyped-def]
    return ctx.step.run("work", span, 0.4)


@flow.function(id="sleepy", trigger=event("t/sleepy"), concurrency=Concurrency(limit=1))
def sleepy(ctx):  # type: ignore[no-untyped-def]
    before = ctx.step.run("before", span, 0.05)
    ctx.step.sleep("nap", "1500ms")
    after = ctx.step.run("after", span, 0.05)
    return {"before": before, "after": after}


@flow.function(
    id="throttled", trigger=event("t/throttled"), throttle=Throttle(limit=2, period="2s")
)
def throttled(ctx):  # type: ignore[no-untyped-def]
    return ctx.step.run("at", stamp)


@flow.function(
    id="rate-limited",
    trigger=event("t/rate-limited"),
    rate_limit={"limit": 2, "period": "1 minute", "key": "event.data.user"},
)
def rate_limited(ctx):  # type: ignore[no-untyped-def]
    return ctx.event.data["n"]


@flow.function(
    id="debounced",
    trigger=event("t/debounced"),
    debounce=Debounce(period="1s", key="event.data.user"),
)
def debounced(ctx):  # type: ignore[no-untyped-def]
    return ctx.event.data["n"]


@flow.function(
    id="debounce-capped",
    trigger=event("t/debounce-capped"),
    debounce=Debounce(period="1s", timeout="1500ms"),
)
def debounce_capped(ctx):  # type: ignore[no-untyped-def]
    return ctx.event.data["n"]


@flow.function(
    id="batched", trigger=event("t/batched"), batch_events=Batch(max_size=3, timeout="1s")
)
def batched(ctx):  # type: ignore[no-untyped-def]
    return [e.data["n"] for e in ctx.events]


@flow.function(
    id="prioritized",
    trigger=event("t/prioritized"),
    concurrency=Concurrency(limit=1),
    priority=Priority(run="event.data.vip ? 300 : 0"),
)
def prioritized(ctx):  # type: ignore[no-untyped-def]
    return ctx.step.run("work", span, 1.5 if ctx.event.data.get("blocker") else 0.05)


@flow.function(id="idempotent", trigger=event("t/idempotent"), idempotency="event.data.order")
def idempotent(ctx):  # type: ignore[no-untyped-def]
    return ctx.event.data["order"]


@flow.function(
    id="single-skip",
    trigger=event("t/single-skip"),
    singleton=Singleton(key="event.data.user", mode="skip"),
)
def single_skip(ctx):  # type: ignore[no-untyped-def]
    ctx.step.sleep("hold", "1500ms")
    return ctx.event.data["n"]


@flow.function(
    id="single-cancel", trigger=event("t/single-cancel"), singleton=Singleton(mode="cancel")
)
def single_cancel(ctx):  # type: ignore[no-untyped-def]
    if ctx.event.data["hold"]:
        ctx.step.sleep("hold", "1 minute")
    return ctx.event.data["n"]


@flow.function(
    id="slot-timeout",
    trigger=event("t/slot-timeout"),
    concurrency=Concurrency(limit=1),
    timeouts=Timeouts(start="1s"),
)
def slot_timeout(ctx):  # type: ignore[no-untyped-def]
    return ctx.step.run("work", span, ctx.event.data["hold"])
