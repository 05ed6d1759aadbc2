"""Waiters benchmark (issue 4): one event resuming its waiter among N waiting runs.

    python bench/waiters.py                             # N = 100, 10,000, 100,000
    python bench/waiters.py --sizes 100,100000 --targets 50

Target (issue 4): with N runs waiting on the same event name with distinct match values
(PostgreSQL store), the time for one event to resume its waiter at N = 100,000 is at
most 1.5x the time at N = 100, both measured in the same run (100 is the baseline).

Setup: a real worker parks a few runs of ``waiter`` (``step.wait_for_event`` on
``bench/shipped`` matching ``data.order_id``); their cf_events / cf_runs / cf_steps /
cf_waits rows are then cloned with SQLAlchemy Core (new run and event ids, order id
``o-<n>`` in the run's event and in cf_waits.match_value, everything else identical)
and the tables ANALYZEd. One database grows from the smallest size to the largest; at
each size it is topped up to exactly N waiting runs before measuring.

Measured per size, for ``--targets`` waiting runs picked at random (each resumed once,
after a few untimed warm-up resumes): the latency of ``flow.send()`` of the matching
event (the lookup + resume transaction and the doorbell), and the time from the send
to the run's ``ended_at`` (read once ``get_run`` shows it completed) with a subprocess
``celery worker -c 2 --pool prefork`` on a private Redis db.

Needs PostgreSQL and Redis as in tests/services.py (see bench/common.py to override).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from celery import Celery

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import (  # noqa: E402
    Row,
    Table,
    celery_worker,
    fmt_time,
    fresh_postgres,
    fresh_redis_db,
    machine_info,
    median,
    redis_url,
    wait_until,
)

from celeryflow import Event, Flow, event  # noqa: E402
from celeryflow.planning import new_run_id  # noqa: E402
from celeryflow.store.tables import events as events_table  # noqa: E402
from celeryflow.store.tables import runs as runs_table  # noqa: E402
from celeryflow.store.tables import steps as steps_table  # noqa: E402
from celeryflow.store.tables import waits as waits_table  # noqa: E402
from celeryflow.store.waits import match_value  # noqa: E402

ORDER_EVENT = "bench/order"
SHIPPED_EVENT = "bench/shipped"
MATCH = "data.order_id"
SEEDS = 3  # runs parked by the real worker, the templates of the clones
WARMUP = 3  # untimed resumes at each size
BATCH = 5000  # rows per executemany
POLL = 0.005


def build(broker: str, store: str, queue: str) -> tuple[Celery, Flow]:
    """A Celery app with a Flow and the ``waiter`` function."""
    app = Celery(f"cf-bench-waiters-{queue}", broker=broker)
    app.conf.update(
        task_default_queue=queue,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    flow = Flow(app, store=store, auto_migrate=True)

    @flow.function(id="waiter", trigger=event(ORDER_EVENT))
    def waiter(ctx: Any) -> Any:
        got = ctx.step.wait_for_event("label", event=SHIPPED_EVENT, match=MATCH, timeout="1 day")
        return got.data["order_id"] if got else None

    return app, flow


# The worker subprocess imports this module (``celery -A waiters``) with these set.
if os.environ.get("CF_BENCH_WAITERS_STORE"):
    app, flow = build(
        os.environ["CF_BENCH_WAITERS_BROKER"],
        os.environ["CF_BENCH_WAITERS_STORE"],
        os.environ["CF_BENCH_WAITERS_QUEUE"],
    )


# ======================================================================================
# Setup: real parked runs, then clones of their rows
# ======================================================================================


class Population:
    """The waiting runs of ``waiter``: order id -> run id, and the rows to clone."""

    def __init__(self, flow: Flow) -> None:
        self.flow = flow
        self.engine = flow.store.engine
        self.waiting: dict[str, str] = {}
        self.template: dict[str, dict[str, Any]] = {}
        self.cloned = 0

    def seed(self) -> None:
        """Park SEEDS real runs through the worker and keep one as the template."""
        ids = self.flow.send(
            [Event(name=ORDER_EVENT, data={"order_id": f"seed-{i}"}) for i in range(SEEDS)]
        )
        for i, event_id in enumerate(ids):

            def parked(event_id: str = event_id) -> str | None:
                found = self.flow.list_runs(event_id=event_id, limit=1)
                return found[0].id if found and found[0].status.value == "waiting" else None

            run_id: str = wait_until(parked, 60, 0.02, f"seed run {i} to wait")
            self.waiting[f"seed-{i}"] = run_id
        with self.engine.connect() as conn:
            run = conn.execute(sa.select(runs_table).where(runs_table.c.id == run_id)).one()
            ev = conn.execute(
                sa.select(events_table).where(events_table.c.id == run.event_id)
            ).one()
            step = conn.execute(sa.select(steps_table).where(steps_table.c.run_id == run_id)).all()
            wait = conn.execute(sa.select(waits_table).where(waits_table.c.run_id == run_id)).one()
        if len(step) != 1 or step[0].status != "waiting" or step[0].kind != "wait":
            raise RuntimeError(f"unexpected steps of a parked run: {step}")
        self.template = {
            "run": dict(run._mapping),
            "event": dict(ev._mapping),
            "step": dict(step[0]._mapping),
            "wait": dict(wait._mapping),
        }

    def clone(self, count: int) -> float:
        """Add ``count`` waiting runs cloned from the template; returns the seconds taken."""
        started = time.perf_counter()
        t = self.template
        run_events = json.loads(t["run"]["events"])
        while count > 0:
            n = min(count, BATCH)
            rows: dict[str, list[dict[str, Any]]] = {"run": [], "event": [], "step": [], "wait": []}
            for _ in range(n):
                order_id = f"o-{self.cloned}"
                self.cloned += 1
                run_id, event_id = new_run_id(), uuid.uuid4().hex
                ev = {**run_events[0], "id": event_id, "data": {"order_id": order_id}}
                data = json.dumps(ev["data"], separators=(",", ":"))
                rows["event"].append({**t["event"], "id": event_id, "data": data})
                evs = json.dumps([ev, *run_events[1:]], separators=(",", ":"))
                rows["run"].append({**t["run"], "id": run_id, "event_id": event_id, "events": evs})
                rows["step"].append({**t["step"], "run_id": run_id})
                mv = match_value(ev, MATCH)
                rows["wait"].append({**t["wait"], "run_id": run_id, "match_value": mv})
                self.waiting[order_id] = run_id
            with self.engine.begin() as conn:
                conn.execute(events_table.insert(), rows["event"])
                conn.execute(runs_table.insert(), rows["run"])
                conn.execute(steps_table.insert(), rows["step"])
                conn.execute(waits_table.insert(), rows["wait"])
            count -= n
        with self.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("ANALYZE")
        return time.perf_counter() - started

    def counts(self) -> tuple[int, int]:
        """(runs with status 'waiting', cf_waits rows) in the store."""
        with self.engine.connect() as conn:
            waiting = conn.execute(
                sa.select(sa.func.count()).where(runs_table.c.status == "waiting")
            ).scalar_one()
            rows = conn.execute(sa.select(sa.func.count()).select_from(waits_table)).scalar_one()
        return int(waiting), int(rows)


# ======================================================================================
# Measuring
# ======================================================================================


def resume(
    flow: Flow,
    order_id: str,
    run_id: str,
    committed: Callable[[str], float] | None = None,
) -> tuple[float, float]:
    """Send the matching event; (send latency, send -> run completed) in seconds.

    The completion is ``committed(run_id)`` (bench/peers/protocol.py's CommitWatch:
    the ``time.perf_counter()`` at which the finish's commit was notified) if given;
    otherwise the run's own ``ended_at``, read once the run shows completed, which
    the worker takes just before the finish commits (on SQLite, WAL with
    synchronous=NORMAL, that commit is an append without fsync). Either way the poll
    interval (POLL) adds nothing to the figure. Both clocks are this machine's."""
    wall = time.time()
    started = time.perf_counter()
    flow.send(Event(name=SHIPPED_EVENT, data={"order_id": order_id}))
    sent = time.perf_counter() - started
    done = committed(run_id) - started if committed is not None else None
    deadline = started + 60
    while True:
        run = flow.get_run(run_id)
        if run.status.value == "completed":
            break
        if run.status.value in ("failed", "cancelled") or time.perf_counter() > deadline:
            raise RuntimeError(f"run {run_id} ({order_id}) is {run.status.value}: {run.error}")
        time.sleep(POLL)
    if run.output != order_id:
        raise RuntimeError(f"run {run_id} returned {run.output!r}, expected {order_id!r}")
    if done is None:
        if run.ended_at is None:
            raise RuntimeError(f"run {run_id} is completed without an ended_at")
        done = run.ended_at.timestamp() - wall
    return sent, done


def measure(pop: Population, targets: int, rng: random.Random) -> dict[str, list[float]]:
    picked = rng.sample(sorted(pop.waiting), WARMUP + targets)
    result: dict[str, list[float]] = {"send": [], "e2e": []}
    for n, order_id in enumerate(picked):
        sent, done = resume(pop.flow, order_id, pop.waiting.pop(order_id))
        if n >= WARMUP:
            result["send"].append(sent)
            result["e2e"].append(done)
    return result


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10, method="inclusive")[-1]


def explain_lookup(pop: Population, rng: random.Random) -> list[str]:
    """EXPLAIN (ANALYZE, BUFFERS) of the select wake_waiters runs, for a waiting run,
    and the sizes of the tables and the index."""
    order_id = rng.choice(sorted(pop.waiting))
    query = (
        sa.select(waits_table, runs_table.c.events, runs_table.c.status.label("run_status"))
        .join(runs_table, runs_table.c.id == waits_table.c.run_id)
        .where(
            waits_table.c.event_name == SHIPPED_EVENT,
            waits_table.c.match_field == MATCH,
            waits_table.c.match_value == match_value({"data": {"order_id": order_id}}, MATCH),
        )
    )
    with pop.engine.connect() as conn:
        compiled = query.compile(dialect=conn.dialect)
        plan = conn.exec_driver_sql(
            f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {compiled}", compiled.params
        ).scalars()
        lines = [str(line) for line in plan]
        sizes = conn.exec_driver_sql(
            "SELECT pg_size_pretty(pg_relation_size('ix_cf_waits_match')),"
            " pg_size_pretty(pg_total_relation_size('cf_waits')),"
            " pg_size_pretty(pg_total_relation_size('cf_runs'))"
        ).one()
    lines.append(
        f"(ix_cf_waits_match {sizes[0]}; cf_waits {sizes[1]} and cf_runs {sizes[2]} "
        "with their indexes)"
    )
    return lines


# ======================================================================================


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--sizes", default="100,10000,100000", help="waiting runs, ascending")
    parser.add_argument("--targets", type=int, default=30, help="timed resumes per size")
    parser.add_argument("--seed", type=int, default=4, help="random seed for picking targets")
    args = parser.parse_args(argv)
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    if sizes != sorted(sizes) or sizes[0] < SEEDS + WARMUP + args.targets:
        parser.error(f"--sizes must ascend, the first >= {SEEDS + WARMUP + args.targets}")

    began = time.time()
    print(f"# python bench/waiters.py {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip())
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    for line in machine_info():
        print(f"# {line}")
    print(flush=True)
    rng = random.Random(args.seed)
    figures: dict[int, dict[str, list[float]]] = {}
    setup: list[str] = []
    with fresh_redis_db() as db, fresh_postgres() as (url, _raw):
        broker = redis_url(db)
        queue = f"cf-bench-{os.getpid()}-waiters"
        _app, flow = build(broker, url, queue)
        pop = Population(flow)
        env = {
            "CF_BENCH_WAITERS_BROKER": broker,
            "CF_BENCH_WAITERS_STORE": url,
            "CF_BENCH_WAITERS_QUEUE": queue,
        }
        with celery_worker(env, queue, module="waiters"):
            pop.seed()
            for size in sizes:
                took = pop.clone(size - len(pop.waiting))
                waiting, rows = pop.counts()
                if waiting != size or rows != size:
                    raise RuntimeError(f"{waiting} waiting runs, {rows} cf_waits rows, not {size}")
                figures[size] = measure(pop, args.targets, rng)
                setup.append(f"{size:,} waiting: topped up in {took:.1f} s")
                print(f"# measured at {size:,} waiting runs", flush=True)
            explain = explain_lookup(pop, rng)
            largest = pop.counts()[0]
        flow.store.engine.dispose()
    print()

    base = figures[sizes[0]]
    table = Table(
        f"Waiters: one event resumes 1 of N waiting runs, PostgreSQL store "
        f"({args.targets} targets per N, median / p90)"
    )
    for size in sizes:
        fig = figures[size]
        for key, label in (("e2e", "send -> run completed"), ("send", "flow.send() latency")):
            for stat, fn in (("median", median), ("p90", p90)):
                value, ref = fn(fig[key]), fn(base[key])
                judged = (
                    key == "e2e" and stat == "median" and size == sizes[-1] and size != sizes[0]
                )
                table.add(
                    Row(
                        f"N={size:,}: {label}, {stat}",
                        fmt_time(value),
                        f"{fmt_time(ref)} at N={sizes[0]:,}",
                        value / ref,
                        "<= 1.5x" if judged else "",
                        (value / ref <= 1.5) if judged else None,
                    )
                )
    table.notes += [
        f"one database grown in place: {'; '.join(setup)}; each top-up inserts cloned "
        "cf_events/cf_runs/cf_steps/cf_waits rows (executemany, 5,000 per transaction) "
        f"then ANALYZE. Resumed runs stay in the tables as completed ({largest:,} still "
        "waiting at the end).",
        f"{SEEDS} seed runs parked by the real worker are the templates; clones differ only "
        "in run id, event id and order id ('o-<n>', in the run's event and in "
        "cf_waits.match_value).",
        f"per size: {WARMUP} untimed warm-up resumes, then {args.targets} targets picked at "
        "random among the waiting runs, each resumed once, one at a time.",
        "flow.send() latency: the event insert, the cf_wait_fields read, the index lookup, "
        "the resume (DELETE wait, UPDATE step and run), the commit and the Celery doorbell.",
        "send -> run completed: to the run's ended_at (the worker takes it just before the "
        "finish commits), read once get_run shows it completed (polled every 5 ms); worker: "
        "python -m celery -A bench/waiters.py worker -c 2 --pool prefork "
        "--without-gossip --without-mingle --without-heartbeat, Redis broker on a private db.",
    ]
    print(table.render(), end="\n\n")
    print(f"Lookup query at N={largest:,} (the select wake_waiters runs for one event):")
    print("\n".join(f"  {line}" for line in explain), end="\n\n")
    results = [r.passed for r in table.rows if r.passed is not None]
    print(
        f"# {sum(1 for r in results if r)} of {len(results)} targets met; "
        f"total {time.time() - began:.0f} s; load average "
        + " ".join(f"{x:.2f}" for x in os.getloadavg())
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
