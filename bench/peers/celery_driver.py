"""Plain Celery's side of bench/peers.py (the project's venv): bench/apps.py's plain
app on a Redis broker, no result backend, a worker subprocess
``python -m celery -A apps worker -c 2``. Nothing of it is durable beyond the broker.

* steps: ``chain`` of 100 trivial tasks (--pool threads), until the last task RPUSHes
  its ``time.time()``.
* throughput: 1,000 ``task.delay()`` of a counting task (--pool prefork, two slots),
  until the counter reaches 1,000 (the last task's ``time.time()``).
* sleepers: 200 ``apply_async(countdown=2)`` of the counting task (Celery ETA: the
  worker holds them in memory until due; --pool prefork), until the counter reaches 200.
  ``--variant relay`` (sleepers only): 200 ``delay()`` of a relay task that, when it
  runs, publishes the counting task with ``countdown=2``: two messages per sleeper, a
  start and an ETA wake-up, the pattern of any engine whose wake-up rides the broker
  (celeryflow's: the run's doorbell, then the parked run's ETA doorbell).
* waiters: not a Celery feature (see UNSUPPORTED).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(BENCH))

import apps  # noqa: E402
import celery  # noqa: E402
import engine  # noqa: E402
import redis  # noqa: E402
from protocol import RUNS, SLEEP_S, SLEEPERS, Unsupported, serve  # noqa: E402

UNSUPPORTED = (
    "Celery has no wait for an external event: a task that waits holds a worker slot "
    "(or polls with retries), and matching an event to its waiter is the application's"
)


@contextlib.contextmanager
def setup(args: Any) -> Iterator[Any]:
    if args.workload == "waiters":
        raise Unsupported(UNSUPPORTED)
    if args.variant == "relay" and args.workload != "sleepers":
        raise Unsupported("the relay variant is measured on the sleepers workload only")
    app = apps.plain_app(args.broker, args.queue)
    count = app.tasks["bench.count"]
    r = redis.Redis.from_url(args.broker, socket_timeout=30)
    env = {"CF_BENCH_KIND": "plain", "CF_BENCH_BROKER": args.broker}
    # Celery's default pool; threads for the chain (one task in flight at a time)
    pool = "threads" if args.workload == "steps" else "prefork"

    with engine.celery_worker(env, args.queue, pool=pool):
        if args.workload == "steps":

            def measure() -> float:
                r.delete(apps.CHAIN_KEY)
                started = time.time()
                apps.hundred_chain(app).apply_async()
                deadline = time.monotonic() + 600
                while (popped := r.blpop([apps.CHAIN_KEY], timeout=1)) is None:
                    if time.monotonic() > deadline:
                        raise TimeoutError("the chain did not finish in 600 s")
                return float(popped[1]) - started

        elif args.workload == "throughput":

            def measure() -> float:
                r.delete(apps.COUNT_KEY, apps.LAST_AT_KEY)
                started = time.time()
                for _ in range(RUNS):
                    count.delay()
                return RUNS / apps.wait_counted(r, RUNS, started)

        else:

            def measure() -> float:
                r.delete(apps.COUNT_KEY, apps.LAST_AT_KEY)
                started = time.time()
                if args.variant == "relay":
                    relay = app.tasks["bench.relay"]
                    for _ in range(SLEEPERS):
                        relay.delay(SLEEP_S)
                else:
                    for _ in range(SLEEPERS):
                        count.apply_async(countdown=SLEEP_S)
                return apps.wait_counted(r, SLEEPERS, started)

        yield measure, {"celery": celery.__version__}
    r.close()


if __name__ == "__main__":
    raise SystemExit(serve(setup))
