"""DBOS Transact's side of bench/peers.py (runs in bench/peers/.venv).

Durable default configuration: ``DBOS(config={"name", "system_database_url"})`` and
nothing else: PostgreSQL with LISTEN/NOTIFY, or a SQLite file (DBOS's own pragmas).
Steps are ``@DBOS.step()`` functions called from a ``@DBOS.workflow()``, each
checkpointed in the system database before the next; workflows run in this process.

* steps: one workflow of 100 trivial steps, ``DBOS.start_workflow`` -> ``get_result``.
* throughput: 1,000 one-step workflows enqueued on a queue with
  ``worker_concurrency=2``, until all results are in. The queue's polling interval is
  set to 0.01 s: at DBOS's default (1 s) a queue dequeues at most worker_concurrency
  workflows per poll, 2 a second here (measured: 1.7/s).
* sleepers: 200 workflows each ``DBOS.sleep_async(2)``, started together (async
  workflows, so no thread per sleeper), until all results are in.
* waiters: N async workflows each in ``DBOS.recv_async(topic)``; one ``DBOS.send``
  to a random one, until its result is in.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dbos import DBOS, DBOSConfig
from protocol import RUNS, SLEEP_S, SLEEPERS, SLOTS, STEPS, Unsupported, serve

TOPIC = "shipped"
QUEUE_POLL = 0.01  # seconds; DBOS's default is 1.0


@DBOS.step()
def trivial() -> dict[str, Any]:
    return {"ok": True, "n": 1}


@DBOS.workflow()
def hundred() -> int:
    for _ in range(STEPS):
        trivial()
    return STEPS


@DBOS.workflow()
def one_step() -> dict[str, Any]:
    return trivial()


@DBOS.workflow()
async def sleeper() -> bool:
    await DBOS.sleep_async(SLEEP_S)
    return True


@DBOS.workflow()
async def waiter() -> Any:
    return await DBOS.recv_async(TOPIC, timeout_seconds=86_400)


class Loop:
    """One asyncio loop in a thread for the async workflows' callers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)


@contextlib.contextmanager
def setup(args: Any) -> Iterator[Any]:
    if args.store == "postgresql":
        url = args.url.replace("postgresql://", "postgresql+psycopg://", 1)
    else:
        url = f"sqlite:///{args.url}"
    config: DBOSConfig = {"name": "cf-bench-peers", "system_database_url": url}
    DBOS(config=config)
    DBOS.launch()
    loop = Loop()
    try:
        if args.workload == "steps":

            def measure() -> float:
                started = time.perf_counter()
                if DBOS.start_workflow(hundred).get_result() != STEPS:
                    raise RuntimeError("the workflow did not return 100")
                return time.perf_counter() - started

        elif args.workload == "throughput":
            # the default polling interval (1 s) dequeues at most SLOTS workflows a second
            queue = DBOS.register_queue(
                "peers", worker_concurrency=SLOTS, polling_interval_sec=QUEUE_POLL
            )

            def measure() -> float:
                started = time.perf_counter()
                handles = [queue.enqueue(one_step) for _ in range(RUNS)]
                for h in handles:
                    h.get_result()
                return RUNS / (time.perf_counter() - started)

        elif args.workload == "sleepers":

            async def sleepers() -> float:
                started = time.perf_counter()
                handles = [await DBOS.start_workflow_async(sleeper) for _ in range(SLEEPERS)]
                for h in handles:
                    await h.get_result()
                return time.perf_counter() - started

            def measure() -> float:
                return float(loop.run(sleepers()))

        elif args.workload == "waiters":
            rng = random.Random(4)

            async def park(n: int) -> list[Any]:
                return [await DBOS.start_workflow_async(waiter) for _ in range(n)]

            waiting = loop.run(park(args.waiters))

            async def resume_one() -> float:
                handle = waiting.pop(rng.randrange(len(waiting)))
                started = time.perf_counter()
                await DBOS.send_async(handle.get_workflow_id(), "go", TOPIC)
                if await handle.get_result() != "go":
                    raise RuntimeError("the waiter did not get the message")
                return time.perf_counter() - started

            def measure() -> float:
                return float(loop.run(resume_one()))

        else:
            raise Unsupported(args.workload)
        import dbos as dbos_package

        yield (
            measure,
            {"dbos": dbos_package.__version__ if hasattr(dbos_package, "__version__") else "?"},
        )
    finally:
        DBOS.destroy(destroy_registry=False)


if __name__ == "__main__":
    raise SystemExit(serve(setup))
