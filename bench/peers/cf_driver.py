"""celeryflow's side of bench/peers.py (the project's venv).

The store is the durable default: PostgreSQL, or a SQLite file (WAL,
synchronous=NORMAL, the store's own pragmas); the broker is a Redis db; workers are
``python -m celery -A <bench module> worker -c 2`` subprocesses.

* steps: a 100 ``ctx.step.run`` function (worker --pool threads -c 2), from
  ``flow.send`` until ``get_run`` shows it completed (polled every 5 ms).
* throughput: 1,000 one-step runs from 1,000 ``flow.send`` calls (one sender), worker
  --pool prefork -c 2 (two slots), until the last ``ended_at``.
* sleepers: 200 runs each ``ctx.step.sleep("nap", 2)`` (worker --pool prefork -c 2),
  until the last ``ended_at``.
* waiters: bench/waiters.py's population (3 runs parked by the worker, then cloned
  rows up to N) and its ``resume``: send the matching event, to the commit of the
  waiter's finish (PostgreSQL: protocol.CommitWatch's NOTIFY) or its ``ended_at``
  (SQLite, where that commit is a WAL append without fsync).
"""

from __future__ import annotations

import contextlib
import itertools
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(BENCH))

import apps  # noqa: E402
import engine  # noqa: E402
import waiters  # noqa: E402
from protocol import RUNS, SLEEP_S, SLEEPERS, CommitWatch, serve  # noqa: E402

from celeryflow import Event, Flow  # noqa: E402


def sa_url(args: Any) -> str:
    if args.store == "postgresql":
        return args.url.replace("postgresql://", "postgresql+psycopg://", 1)
    return f"sqlite:///{args.url}"


def wait_completed(flow: Flow, event_id: str, timeout: float = 120.0) -> None:
    """Until the run of ``event_id`` is completed, polling every 5 ms."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = flow.list_runs(event_id=event_id, limit=1)
        if found and found[0].status.value == "completed":
            return
        if found and found[0].status.value in ("failed", "cancelled"):
            raise RuntimeError(f"run {found[0].id} is {found[0].status.value}")
        time.sleep(0.005)
    raise TimeoutError(f"the run of event {event_id} did not complete in {timeout:.0f} s")


@contextlib.contextmanager
def setup(args: Any) -> Iterator[Any]:
    url = sa_url(args)
    info = {"store": url.split("://")[0], "broker": "redis"}
    if args.workload == "waiters":
        _app, flow = waiters.build(args.broker, url, args.queue)
        pop = waiters.Population(flow)
        rng = random.Random(4)
        env = {
            "CF_BENCH_WAITERS_BROKER": args.broker,
            "CF_BENCH_WAITERS_STORE": url,
            "CF_BENCH_WAITERS_QUEUE": args.queue,
        }
        with engine.celery_worker(env, args.queue, module="waiters"):
            pop.seed()
            pop.clone(args.waiters - len(pop.waiting))
            watch = CommitWatch(args.url, "cf_runs", "id") if args.store == "postgresql" else None

            def resume() -> float:
                order_id = rng.choice(sorted(pop.waiting))
                run_id = pop.waiting.pop(order_id)
                committed = watch.completed if watch is not None else None
                _sent, done = waiters.resume(flow, order_id, run_id, committed)
                return done

            yield resume, info
            if watch is not None:
                watch.close()
        flow.store.engine.dispose()
        return

    _app, flow = apps.flow_app(args.broker, url, args.queue)
    flow.store.engine  # noqa: B018  (migrate before the worker starts)
    env = {"CF_BENCH_KIND": "flow", "CF_BENCH_BROKER": args.broker, "CF_BENCH_STORE": url}
    # Celery's default pool, as pyworkflow's worker runs; threads for the steps, where
    # one run (or one chain) is in flight at a time and a pool process adds nothing
    pool = "threads" if args.workload == "steps" else "prefork"
    counter = engine.RunCounter(url)
    reps = itertools.count()
    with engine.celery_worker(env, args.queue, pool=pool):
        if args.workload == "steps":

            def measure() -> float:
                started = time.perf_counter()
                [event_id] = flow.send(Event(name=apps.HUNDRED_EVENT))
                wait_completed(flow, event_id)
                return time.perf_counter() - started

        elif args.workload == "throughput":

            def measure() -> float:
                rep = next(reps)
                started = time.time()
                for i in range(RUNS):
                    flow.send(Event(name=apps.ONE_STEP_EVENT, data={"i": i, "rep": rep}))
                return RUNS / (counter.wait_for(RUNS, started, 600) - started)

        else:

            def measure() -> float:
                rep = next(reps)
                started = time.time()
                for i in range(SLEEPERS):
                    data = {"seconds": SLEEP_S, "i": i, "rep": rep}
                    flow.send(Event(name=apps.SLEEP_EVENT, data=data))
                return counter.wait_for(SLEEPERS, started, 600) - started

        yield measure, info
    counter.engine.dispose()
    flow.store.engine.dispose()


if __name__ == "__main__":
    raise SystemExit(serve(setup))
