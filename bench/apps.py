"""The Celery apps the benchmarks run: a celeryflow app and a plain Celery app.

bench/engine.py builds them in-process with :func:`flow_app` / :func:`plain_app`; a
worker subprocess (``python -m celery -A apps worker``, with bench/ on PYTHONPATH)
gets the same app from environment variables:

* ``CF_BENCH_KIND``   -- ``flow`` or ``plain``
* ``CF_BENCH_BROKER`` -- broker URL (a Redis db; the counters live in the same db)
* ``CF_BENCH_QUEUE``  -- the queue both sides use
* ``CF_BENCH_STORE``  -- the celeryflow store URL (``flow`` only)
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery, chain

from celeryflow import Flow, event

STEPS = 100
ONE_STEP_EVENT = "bench/one"
HUNDRED_EVENT = "bench/hundred"
SLEEP_EVENT = "bench/sleep"
COUNT_KEY = "bench:count"
LAST_AT_KEY = "bench:last-at"
CHAIN_KEY = "bench:chain-done"

_redis: dict[int, Any] = {}


def _client(app: Celery) -> Any:
    """One Redis client per process (prefork children must not share the parent's)."""
    import redis

    pid = os.getpid()
    if pid not in _redis:
        _redis.clear()
        _redis[pid] = redis.Redis.from_url(app.conf.broker_url)
    return _redis[pid]


def trivial() -> dict[str, Any]:
    return {"ok": True, "n": 1}


def _configure(app: Celery, queue: str) -> None:
    app.conf.update(
        task_default_queue=queue,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )


def flow_app(broker: str, store: str, queue: str) -> tuple[Celery, Flow]:
    """A Celery app with a Flow and the benchmark functions (100 steps, one step, a
    sleep of ``data.seconds``)."""
    app = Celery(f"cf-bench-flow-{queue}", broker=broker)
    _configure(app, queue)
    flow = Flow(app, store=store, auto_migrate=True)

    @flow.function(id="one-step", trigger=event(ONE_STEP_EVENT))
    def one_step(ctx: Any) -> dict[str, Any]:
        return {"s": ctx.step.run("s", trivial)}

    @flow.function(id="hundred-steps", trigger=event(HUNDRED_EVENT))
    def hundred_steps(ctx: Any) -> dict[str, Any]:
        for _ in range(STEPS):
            ctx.step.run("s", trivial)
        return {"steps": STEPS}

    @flow.function(id="sleeper", trigger=event(SLEEP_EVENT))
    def sleeper(ctx: Any) -> bool:
        ctx.step.sleep("nap", float(ctx.event.data.get("seconds", 2)))
        return True

    return app, flow


def plain_app(broker: str, queue: str) -> Celery:
    """A plain Celery app: a counting task, a relay that publishes it with an ETA, and
    the two links of a chain."""
    app = Celery(f"cf-bench-plain-{queue}", broker=broker)
    _configure(app, queue)

    @app.task(name="bench.count", shared=False)
    def count() -> dict[str, Any]:
        pipe = _client(app).pipeline(transaction=False)
        pipe.incr(COUNT_KEY)
        pipe.set(LAST_AT_KEY, repr(time.time()))
        pipe.execute()
        return trivial()

    @app.task(name="bench.relay", shared=False)
    def relay(seconds: float) -> dict[str, Any]:
        # a sleeper's two messages, as any engine whose wake-up rides the broker sends
        # them: this start, and the counting task published again with an ETA
        count.apply_async(countdown=seconds)
        return trivial()

    @app.task(name="bench.hop", shared=False)
    def hop() -> dict[str, Any]:
        return trivial()

    @app.task(name="bench.last", shared=False)
    def last() -> dict[str, Any]:
        _client(app).rpush(CHAIN_KEY, repr(time.time()))
        return trivial()

    return app


def hundred_chain(app: Celery) -> Any:
    """``chain`` of 100 trivial tasks; the last one records when it ran."""
    hop, last = app.tasks["bench.hop"], app.tasks["bench.last"]
    return chain(*(hop.si() for _ in range(STEPS - 1)), last.si())


_kind = os.environ.get("CF_BENCH_KIND")
if _kind == "flow":
    app, flow = flow_app(
        os.environ["CF_BENCH_BROKER"], os.environ["CF_BENCH_STORE"], os.environ["CF_BENCH_QUEUE"]
    )
elif _kind == "plain":
    app = plain_app(os.environ["CF_BENCH_BROKER"], os.environ["CF_BENCH_QUEUE"])
