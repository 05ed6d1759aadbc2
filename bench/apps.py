"""The Celery apps the benchmarks run: a celeryflow app and a plain Celery app.

bench/engine.py builds them in-process with :func:`flow_app` / :func:`plain_app`; a
worker subprocess (``python -m celery -A apps worker``, with bench/ on PYTHONPATH)
gets the same app from environment variables:

* ``CF_BENCH_KIND``   -- ``flow``, ``plain`` or ``floor``
* ``CF_BENCH_BROKER`` -- broker URL (a Redis db; the counters live in the same db)
* ``CF_BENCH_QUEUE``  -- the queue both sides use
* ``CF_BENCH_STORE``  -- the celeryflow store URL (``flow``); for ``floor``, a libpq
  URL or a SQLite file path
"""

from __future__ import annotations

import os
import sqlite3
import threading
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


def count_one(app: Celery) -> None:
    """The counting side's finish: bump the counter and note when (one round trip)."""
    pipe = _client(app).pipeline(transaction=False)
    pipe.incr(COUNT_KEY)
    pipe.set(LAST_AT_KEY, repr(time.time()))
    pipe.execute()


def wait_counted(client: Any, total: int, started: float, timeout: float = 600) -> float:
    """Until the counter reaches ``total``: the last count's time minus ``started``."""
    deadline = time.monotonic() + timeout
    while int(client.get(COUNT_KEY) or 0) < total:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{total} tasks did not finish in {timeout:.0f} s")
        time.sleep(0.01)
    return float(client.get(LAST_AT_KEY) or 0) - started


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
        count_one(app)
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


FLOOR_TABLE = "bench_sleepers"


class FloorStore:
    """The least a durable engine writes for a sleeper, through the bare driver: one
    short row per run, each change committed on its own (psycopg autocommit; SQLite
    BEGIN IMMEDIATE ... COMMIT with the store's pragmas, WAL + synchronous=NORMAL).
    One connection per process (prefork children must not share the parent's), shared
    by its threads under a lock: a timer thread commits beside the child's main thread,
    and a connection per timer thread would add a connection's setup to each wake-up."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sqlite = not url.startswith("postgresql://")
        self._lock = threading.Lock()
        self._pid = 0
        self._connection: Any = None

    def _conn(self) -> Any:
        if self._pid != os.getpid():
            if self.sqlite:
                conn: Any = sqlite3.connect(
                    self.url, isolation_level=None, timeout=60, check_same_thread=False
                )
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            else:
                import psycopg

                conn = psycopg.connect(self.url, autocommit=True)
            self._connection, self._pid = conn, os.getpid()
        return self._connection

    def create(self) -> None:
        self._write(
            f"CREATE TABLE IF NOT EXISTS {FLOOR_TABLE} (id VARCHAR(36) PRIMARY KEY, "
            "status VARCHAR(16) NOT NULL, wake_at DOUBLE PRECISION, ended_at DOUBLE PRECISION)",
            (),
        )

    def _write(self, sql: str, params: tuple[Any, ...]) -> None:
        with self._lock:
            conn = self._conn()
            if self.sqlite:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(sql.replace("%s", "?"), params)
                conn.execute("COMMIT")
            else:
                conn.execute(sql, params)

    def start(self, run_id: str) -> None:
        self._write(f"INSERT INTO {FLOOR_TABLE} (id, status) VALUES (%s, 'queued')", (run_id,))

    def park(self, run_id: str, wake_at: float) -> None:
        self._write(
            f"UPDATE {FLOOR_TABLE} SET status = 'sleeping', wake_at = %s WHERE id = %s",
            (wake_at, run_id),
        )

    def end(self, run_id: str) -> None:
        self._write(
            f"UPDATE {FLOOR_TABLE} SET status = 'completed', ended_at = %s WHERE id = %s",
            (time.time(), run_id),
        )


def floor_app(broker: str, queue: str, store: str) -> Celery:
    """The sleepers' floor (bench/peers/floor_driver.py): plain Celery tasks doing the
    least any durable engine must for a run that sleeps, with nothing else: the sender
    commits the run's row, then publishes ``floor.start``; that task commits the park
    (its wake time), and the wake-up either rides the broker (``relay``: ``floor.end``
    published with ``countdown``, two messages per sleeper) or stays in the worker's
    memory (a ``threading.Timer`` in the pool process, one message per sleeper and
    nothing that survives the process); ``floor.end`` commits the end and counts."""
    app = Celery(f"cf-bench-floor-{queue}", broker=broker)
    _configure(app, queue)
    rows = FloorStore(store)

    def ended(run_id: str) -> None:
        rows.end(run_id)
        count_one(app)

    @app.task(name="floor.end", shared=False)
    def end(run_id: str) -> None:
        ended(run_id)

    @app.task(name="floor.start", shared=False)
    def start(run_id: str, seconds: float, relay: bool) -> None:
        rows.park(run_id, time.time() + seconds)
        if relay:
            end.apply_async((run_id,), countdown=seconds)
        else:
            threading.Timer(seconds, ended, (run_id,)).start()

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
elif _kind == "floor":
    app = floor_app(
        os.environ["CF_BENCH_BROKER"], os.environ["CF_BENCH_QUEUE"], os.environ["CF_BENCH_STORE"]
    )
