"""One ``flow.send`` of 10,000 events (issue 12 item 5) against a bare executemany.

    python bench/send_many.py                      # SQLite and PostgreSQL (~1 min)
    python bench/send_many.py --stores sqlite      # one store
    python bench/send_many.py --events 10000 --rounds 3

For each store, in rounds (the order of the sides rotated per round, the ratio taken
within a round, the median shown):

* celeryflow, no run: ``flow.send(list of N events)`` that trigger no function: the
  validation, the per-event id check and insert, the waiter lookup, one transaction.
* celeryflow, N runs: the same events each start one run of a plain function (the run
  rows, and N doorbells through the store's usual broker: the embedded one beside
  SQLite, Redis beside PostgreSQL).
* baseline: N rows shaped like ``cf_events`` (and, for the second, N ``cf_runs`` rows)
  inserted with one bare SQLAlchemy ``executemany`` in one transaction, into a fresh
  database of the same kind with the store's engine settings.
* linearity: the time per event of a send of N events starting N runs against that
  of N/10 (1.0x is linear; the quadratic ``_ring_for_slots`` of before grew with N).

Needs PostgreSQL and Redis as in tests/services.py (bench/common.py to override).
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import (  # noqa: E402
    Row,
    Table,
    fmt_time,
    fresh_postgres,
    fresh_redis_db,
    fresh_sqlite,
    machine_info,
    median,
    redis_url,
)

from celeryflow import Event, Flow, event  # noqa: E402
from celeryflow.planning import new_run_id  # noqa: E402
from celeryflow.store.database import create_store_engine  # noqa: E402
from celeryflow.store.tables import events as events_table  # noqa: E402
from celeryflow.store.tables import metadata  # noqa: E402
from celeryflow.store.tables import runs as runs_table  # noqa: E402


def _events(count: int, name: str) -> list[Event]:
    return [Event(name=name, data={"n": i, "customer": f"c-{i % 97}"}) for i in range(count)]


def _flow(store: str, broker: str) -> Flow:
    from celery import Celery

    app = Celery(f"send-many-{uuid.uuid4().hex[:6]}", broker=broker)
    app.conf.task_default_queue = f"send-many-{uuid.uuid4().hex}"
    flow = Flow(app, store=store, auto_migrate=True)

    @flow.function(id="one-run", trigger=event("bench/run"))
    def one_run(ctx: Any) -> None:
        return None

    return flow


def _timed(action: Callable[[], Any]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def _baseline(engine: sa.Engine, count: int, with_runs: bool) -> float:
    """N cf_events rows (and N cf_runs rows) in one executemany each, one transaction."""
    now = datetime.now(timezone.utc)
    rows = [
        {
            "id": uuid.uuid4().hex,
            "name": "bench/base",
            "data": f'{{"n":{i},"customer":"c-{i % 97}"}}',
            "ts": int(now.timestamp() * 1000),
            "received_at": now,
        }
        for i in range(count)
    ]
    run_rows = [
        {
            "id": new_run_id(),
            "function_id": "one-run",
            "event_id": r["id"],
            "events": "[]",
            "status": "queued",
            "attempt": 0,
            "fence": 0,
            "dispatches": 0,
            "due_at": now,
            "queue_at": now,
            "created_at": now,
        }
        for r in rows
    ]

    def insert() -> None:
        with engine.begin() as conn:
            conn.execute(events_table.insert(), rows)
            if with_runs:
                conn.execute(runs_table.insert(), run_rows)

    return _timed(insert)


def measure(kind: str, count: int, rounds: int) -> Table:
    table = Table(f"{kind}: one flow.send of {count:,} events (median of {rounds} rounds)")
    with ExitStack() as stack:
        if kind == "sqlite":
            store, path = stack.enter_context(fresh_sqlite())
            broker = f"celeryflow+sqlite:///{Path(path).with_name('broker.db')}"
            base_url, _ = stack.enter_context(fresh_sqlite())
        else:
            store, _ = stack.enter_context(fresh_postgres())
            broker = redis_url(stack.enter_context(fresh_redis_db()))
            base_url, _ = stack.enter_context(fresh_postgres())
        flow = _flow(store, broker)
        base = create_store_engine(base_url)
        metadata.create_all(base, tables=[events_table, runs_table])
        flow.send(_events(10, "bench/none"))  # warm-up: connections, statements
        flow.send(_events(10, "bench/run"))
        _baseline(base, 10, True)
        small = max(1, count // 10)
        sides: dict[str, Callable[[], float]] = {
            "none": lambda: _timed(lambda: flow.send(_events(count, "bench/none"))),
            "runs": lambda: _timed(lambda: flow.send(_events(count, "bench/run"))),
            "base": lambda: _baseline(base, count, False),
            "base+runs": lambda: _baseline(base, count, True),
            "small": lambda: _timed(lambda: flow.send(_events(small, "bench/run"))),
        }
        times: dict[str, list[float]] = {k: [] for k in sides}
        ratios: dict[str, list[float]] = {"none": [], "runs": [], "linear": []}
        order = list(sides)
        for r in range(rounds):
            got = {}
            for name in order[r % len(order) :] + order[: r % len(order)]:
                got[name] = sides[name]()
                times[name].append(got[name])
            ratios["none"].append(got["none"] / got["base"])
            ratios["runs"].append(got["runs"] / got["base+runs"])
            ratios["linear"].append((got["runs"] / count) / (got["small"] / small))
        base.dispose()
        flow.store.engine.dispose()
    per = 1e6 / count
    table.add(
        Row(
            "send, events only",
            f"{fmt_time(median(times['none']))} ({median(times['none']) * per:.0f} us/event)",
            f"{fmt_time(median(times['base']))} executemany",
            median(ratios["none"]),
        )
    )
    table.add(
        Row(
            "send, one run per event (+ doorbells)",
            f"{fmt_time(median(times['runs']))} ({median(times['runs']) * per:.0f} us/event)",
            f"{fmt_time(median(times['base+runs']))} executemany x2",
            median(ratios["runs"]),
        )
    )
    table.add(
        Row(
            f"per event with runs: {count:,} vs {small:,} in one send",
            f"{median(times['runs']) * per:.0f} us",
            f"{median(times['small']) * 1e6 / small:.0f} us",
            median(ratios["linear"]),
            "~1x (linear)",
        )
    )
    table.notes += [
        "ratio = celeryflow / baseline within a round (median over rounds); "
        "the linearity row: time per event of the large send / of the small one, both "
        "starting one run per event.",
        "events: name + data {'n': i, 'customer': 'c-..'}, no id (one is made), "
        "no waiters; the store already holds the earlier rounds' events.",
    ]
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print("# python bench/send_many.py " + " ".join(sys.argv[1:]))
    print(f"# {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC")
    for line in machine_info():
        print(f"# {line}")
    for kind in args.stores.split(","):
        print()
        print(measure(kind.strip(), args.events, args.rounds).render())


if __name__ == "__main__":
    main()
