"""Engine benchmarks against baselines measured in the same run (issue 3).

    python bench/engine.py                      # all parts, PostgreSQL and SQLite stores
    python bench/engine.py --only steps         # or chain, events (comma-separated)
    python bench/engine.py --stores postgresql  # skip SQLite

Parts, each a table of figures with the baseline, the ratio and the target:

1. steps  -- per-step overhead of a 100-step function (real in-process thread worker)
             vs one INSERT + COMMIT of a step-sized row with SQLAlchemy Core on the same
             database and engine settings; target <= 1.6x.
2. chain  -- wall time of a 100-step function vs a Celery ``chain`` of 100 trivial tasks
             on the same Redis broker, both on a worker subprocess (--pool threads -c 2);
             target: celeryflow >= 10x faster.

Every part measures its sides in rounds, rotating their order each round, and takes
each ratio within a round (the median over rounds is shown): this VM's speed drifts by
up to 1.5x within minutes, which a baseline measured once, before or after, would
carry into the ratio.
3. events -- one-step runs per second from N events vs N plain trivial tasks, both on a
             subprocess ``celery worker -c 2 --pool prefork`` on the same Redis broker;
             target >= 0.5x.

Needs PostgreSQL and Redis as in tests/services.py (see bench/common.py to override).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import apps  # noqa: E402
from common import (  # noqa: E402
    Row,
    RunCounter,
    Table,
    celery_worker,
    fmt_rate,
    fmt_time,
    fresh_postgres,
    fresh_redis_db,
    fresh_sqlite,
    machine_info,
    median,
    paired,
    redis_client,
    redis_url,
    rounds,
    wait_until,
)

from celeryflow import Event, Flow, RunStatus  # noqa: E402
from celeryflow.runs import Run  # noqa: E402
from celeryflow.store.database import create_store_engine  # noqa: E402
from celeryflow.store.tables import steps as steps_table  # noqa: E402
from celeryflow.tasks import start_test_worker  # noqa: E402

STORE_LABEL = {"postgresql": "PostgreSQL", "sqlite": "SQLite"}
STEP_OUTPUT = json.dumps(apps.trivial(), separators=(",", ":"))
_queue_seq = 0


def new_queue(tag: str) -> str:
    global _queue_seq
    _queue_seq += 1
    return f"cf-bench-{os.getpid()}-{_queue_seq}-{tag}"


@contextmanager
def fresh(kind: str) -> Iterator[tuple[str, str]]:
    """(sqlalchemy url, raw driver url or path) of a fresh store database."""
    maker = fresh_postgres if kind == "postgresql" else fresh_sqlite
    with maker() as urls:
        yield urls


def utc_ts(value: datetime | None) -> float:
    assert value is not None
    return value.timestamp()


def poll_run(flow: Flow, event_id: str, timeout: float = 120.0) -> Run:
    """The finished run of ``event_id`` (polling every 20 ms; timings come from the
    store's own timestamps, so the poll interval does not enter the figures)."""

    def probe() -> Run | None:
        found = flow.list_runs(event_id=event_id, limit=1)
        if not found or found[0].status.value not in ("completed", "failed", "cancelled"):
            return None
        return flow.get_run(found[0].id)

    run: Run = wait_until(probe, timeout, 0.02, f"the run of event {event_id}")
    if run.status != RunStatus.COMPLETED:
        raise RuntimeError(f"run {run.id} ended {run.status}: {run.error}")
    return run


# ======================================================================================
# Part 1: per-step overhead
# ======================================================================================


def step_row(run_id: str, i: int, now: datetime) -> dict[str, Any]:
    """A row shaped like the one the engine writes for a completed ``step.run``."""
    return {
        "run_id": run_id,
        "key": "s" if i == 0 else f"s:{i}",
        "name": "s",
        "position": i,
        "kind": "run",
        "status": "completed",
        "output": STEP_OUTPUT,
        "error": None,
        "attempts": 1,
        "wake_at": None,
        "started_at": now,
        "ended_at": now,
    }


@contextmanager
def engine_steps(kind: str, broker: str) -> Iterator[Callable[[], tuple[float, float]]]:
    """Rounds of a 100-step function on a real in-process worker: each call returns
    (claim->completion / 100, step span / 99) of one run."""
    with fresh(kind) as (url, _raw):
        app, flow = apps.flow_app(broker, url, new_queue(f"steps-{kind}"))
        with start_test_worker(app, pool="threads", concurrency=2):

            def measure() -> tuple[float, float]:
                [event_id] = flow.send(Event(name=apps.HUNDRED_EVENT))
                run = poll_run(flow, event_id)
                if len(run.steps) != apps.STEPS:
                    raise RuntimeError(f"run {run.id} recorded {len(run.steps)} steps")
                claim_to_end = utc_ts(run.ended_at) - utc_ts(run.started_at)
                first, last = run.steps[0], run.steps[-1]
                span = utc_ts(last.ended_at) - utc_ts(first.started_at)
                return claim_to_end / apps.STEPS, span / (apps.STEPS - 1)

            yield measure
        flow.store.engine.dispose()


def scratch_table() -> sa.Table:
    """A table with exactly cf_steps' columns, types and primary key."""
    return steps_table.to_metadata(sa.MetaData(), name="bench_scratch")


@contextmanager
def sa_inserts(url: str) -> Iterator[Callable[[], float]]:
    """Rounds of 100 x INSERT + COMMIT with SQLAlchemy Core, celeryflow's engine setup;
    each call returns the cost of one."""
    engine = create_store_engine(url)
    table = scratch_table()
    table.metadata.create_all(engine)
    insert = table.insert()

    def measure() -> float:
        run_id = f"sa-{os.urandom(8).hex()}"
        now = datetime.now().astimezone()
        started = time.perf_counter()
        for i in range(apps.STEPS):
            with engine.begin() as conn:
                conn.execute(insert, step_row(run_id, i, now))
        return (time.perf_counter() - started) / apps.STEPS

    try:
        yield measure
    finally:
        engine.dispose()


@contextmanager
def raw_inserts(kind: str, raw: str) -> Iterator[Callable[[], float]]:
    """The same INSERT + COMMIT through the driver alone (psycopg / sqlite3), into the
    scratch table :func:`sa_inserts` created."""
    cols = [c.name for c in steps_table.c]
    naive = datetime.utcnow()  # the columns hold naive UTC
    if kind == "postgresql":
        import psycopg

        marks = ", ".join(["%s"] * len(cols))
        sql = f"INSERT INTO bench_scratch ({', '.join(cols)}) VALUES ({marks})"
        with psycopg.connect(raw) as pg:

            def measure_pg() -> float:
                run_id = f"pg-{os.urandom(8).hex()}"
                started = time.perf_counter()
                for i in range(apps.STEPS):
                    row = step_row(run_id, i, naive)
                    pg.execute(sql, [row[c] for c in cols])
                    pg.commit()
                return (time.perf_counter() - started) / apps.STEPS

            yield measure_pg
        return
    sql = f"INSERT INTO bench_scratch ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
    lite = sqlite3.connect(raw, isolation_level=None, timeout=60)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON"):
        lite.execute(f"PRAGMA {pragma}")

    def measure_lite() -> float:
        run_id = f"lite-{os.urandom(8).hex()}"
        started = time.perf_counter()
        for i in range(apps.STEPS):
            row = step_row(run_id, i, naive)
            lite.execute("BEGIN IMMEDIATE")
            lite.execute(sql, [row[c] for c in cols])
            lite.execute("COMMIT")
        return (time.perf_counter() - started) / apps.STEPS

    try:
        yield measure_lite
    finally:
        lite.close()


@contextmanager
def floors() -> Iterator[Callable[[], tuple[float, float]]]:
    """What 100 steps cost on this PostgreSQL before any engine work, through psycopg
    alone: 100 INSERTs of a cf_steps-shaped row each in autocommit (one round trip
    and one WAL flush: the least a step made durable before the next can cost), and
    100 bare round trips (SELECT 1: the least any step that waits for the database
    can cost). Each call returns (inserts, round trips), each for all 100."""
    import psycopg

    cols = [c.name for c in steps_table.c]
    naive = datetime.utcnow()
    sql = f"INSERT INTO bench_scratch ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})"
    with fresh("postgresql") as (url, raw):
        engine = create_store_engine(url)
        scratch_table().metadata.create_all(engine)
        engine.dispose()
        with psycopg.connect(raw, autocommit=True) as conn:

            def measure() -> tuple[float, float]:
                run_id = f"floor-{os.urandom(8).hex()}"
                started = time.perf_counter()
                for i in range(apps.STEPS):
                    row = step_row(run_id, i, naive)
                    conn.execute(sql, [row[c] for c in cols])
                middle = time.perf_counter()
                for _ in range(apps.STEPS):
                    conn.execute("SELECT 1")
                return middle - started, time.perf_counter() - middle

            yield measure


def part_steps(kinds: list[str], broker: str, runs: int) -> Table:
    table = Table(
        f"1. Per-step overhead: 100-step function vs INSERT+COMMIT (median of {runs} rounds)"
    )
    for kind in kinds:
        label = STORE_LABEL[kind]
        with ExitStack() as stack:
            url, raw = stack.enter_context(fresh(kind))
            measures: dict[str, Callable[[], Any]] = {
                "engine": stack.enter_context(engine_steps(kind, broker)),
                "sa": stack.enter_context(sa_inserts(url)),
            }
            measures["raw"] = stack.enter_context(raw_inserts(kind, raw))
            got = rounds(runs, measures)
        run = [r for r, _span in got["engine"]]
        span = [s for _run, s in got["engine"]]
        base, raw_cost = got["sa"], got["raw"]
        ratio = paired(run, base)
        table.add(
            Row(
                f"{label}: per step, claim->completion / 100",
                fmt_time(median(run)),
                f"{fmt_time(median(base))} SA Core",
                ratio,
                "<= 1.6x",
                ratio <= 1.6,
            )
        )
        table.add(
            Row(
                f"{label}: per step, step span / 99 (info)",
                fmt_time(median(span)),
                f"{fmt_time(median(base))} SA Core",
                paired(span, base),
            )
        )
        # issue 17's floor target: the same INSERT through the bare driver from Python
        floor_target = 1.5 if kind == "postgresql" else 4.0
        floor_ratio = paired(run, raw_cost)
        table.add(
            Row(
                f"{label}: same vs raw driver",
                fmt_time(median(run)),
                f"{fmt_time(median(raw_cost))} {'psycopg' if kind == 'postgresql' else 'sqlite3'}",
                floor_ratio,
                f"<= {floor_target}x",
                floor_ratio <= floor_target,
            )
        )
    table.notes += [
        "celeryflow: a real worker (Celery thread pool, -c 2, Redis broker) runs a function "
        "of 100 ctx.step.run('s', trivial) steps; the figure used for the target is "
        "(run.ended_at - run.started_at) / 100 from the store's own timestamps: the claim "
        "(UPDATE .. RETURNING + loading the memo), 100 step bodies and 100 step writes, up "
        "to the final UPDATE (that last commit is not included).",
        "step span = (last step ended_at - first step started_at) / 99: the steady state "
        "between steps, without claim and finish.",
        "baseline: 100 x (BEGIN; INSERT one cf_steps-shaped row; COMMIT) into a scratch "
        "table with cf_steps' columns, via SQLAlchemy Core on create_store_engine(url) "
        "(SQLite: WAL, synchronous=NORMAL, BEGIN IMMEDIATE); raw driver rows use the same "
        "statement and, for SQLite, the same pragmas.",
        "rounds: one warm-up, then each round runs the function once and each baseline once "
        "(100 INSERTs), in an order rotated per round; shown are medians of each, and the "
        "ratio is the median of the ratios within each round (this VM's speed drifts by up "
        "to 1.5x within minutes).",
        "fresh databases (PostgreSQL cf_bench_<hex>, SQLite in a temp dir): one for the "
        "store, one for the baselines' scratch table.",
    ]
    return table


# ======================================================================================
# Part 2: a 100-step function vs a chain of 100 tasks
# ======================================================================================


@contextmanager
def chain_rounds(broker: str, db: int) -> Iterator[Callable[[], float]]:
    """Rounds of a Celery chain of 100 tasks on a worker subprocess (thread pool, -c 2);
    each call returns its wall time."""
    queue = new_queue("chain")
    app = apps.plain_app(broker, queue)
    r = redis_client(db)
    env = {"CF_BENCH_KIND": "plain", "CF_BENCH_BROKER": broker}
    with celery_worker(env, queue, pool="threads"):

        def measure() -> float:
            r.delete(apps.CHAIN_KEY)
            signature = apps.hundred_chain(app)
            started = time.time()
            signature.apply_async()
            popped = r.blpop([apps.CHAIN_KEY], timeout=120)
            if popped is None:
                raise TimeoutError("the chain did not finish in 120 s")
            return float(popped[1]) - started

        yield measure
    r.close()


@contextmanager
def flow_wall(kind: str, broker: str) -> Iterator[Callable[[], float]]:
    """Rounds of a 100-step function from send to its end, on a worker subprocess
    (thread pool, -c 2); each call returns the wall time."""
    queue = new_queue(f"wall-{kind}")
    with fresh(kind) as (url, _raw):
        _app, flow = apps.flow_app(broker, url, queue)
        flow.store.engine  # noqa: B018  (migrate before the worker starts)
        env = {"CF_BENCH_KIND": "flow", "CF_BENCH_BROKER": broker, "CF_BENCH_STORE": url}
        with celery_worker(env, queue, pool="threads"):

            def measure() -> float:
                started = time.time()
                [event_id] = flow.send(Event(name=apps.HUNDRED_EVENT))
                run = poll_run(flow, event_id)
                return utc_ts(run.ended_at) - started

            yield measure
        flow.store.engine.dispose()


def part_chain(kinds: list[str], broker: str, db: int, runs: int) -> Table:
    table = Table(
        f"2. Wall time: 100-step function vs chain of 100 Celery tasks (median of {runs} rounds)"
    )
    with ExitStack() as stack:
        measures: dict[str, Callable[[], Any]] = {
            "chain": stack.enter_context(chain_rounds(broker, db))
        }
        for kind in kinds:
            measures[kind] = stack.enter_context(flow_wall(kind, broker))
        if "postgresql" in kinds:
            measures["floors"] = stack.enter_context(floors())
        got = rounds(runs, measures)
    chain_wall = got["chain"]
    for kind in kinds:
        wall = got[kind]
        speedup = paired(chain_wall, wall)
        table.add(
            Row(
                f"{STORE_LABEL[kind]} store: send -> run completed",
                fmt_time(median(wall)),
                f"{fmt_time(median(chain_wall))} chain",
                speedup,
                ">= 10x faster",
                speedup >= 10,
            )
        )
        if kind == "postgresql":
            inserts = [i for i, _t in got["floors"]]
            trips = [t for _i, t in got["floors"]]
            for what, floor in (("durable INSERTs", inserts), ("round trips", trips)):
                table.add(
                    Row(
                        f"PostgreSQL: floor, 100 {what} alone (info)",
                        fmt_time(median(floor)),
                        f"{fmt_time(median(chain_wall))} chain",
                        paired(chain_wall, floor),
                    )
                )
    table.notes += [
        "ratio = chain wall time / celeryflow wall time (higher is better for celeryflow), "
        "the median of the ratios within each round.",
        "both sides: the same Redis broker, a worker subprocess each (python -m celery -A "
        "bench/apps.py worker --pool threads -c 2), no result backend; the part's workers "
        "run throughout (an idle one waits on Redis).",
        "rounds: one warm-up, then each round runs the chain, each store's function and the "
        "floors once, in an order rotated per round.",
        "chain: chain(hop.si() x 99, last.si()).apply_async(); timed from apply_async until "
        "the last task's time.time(), which it RPUSHes to Redis.",
        "celeryflow: timed from flow.send(event) until run.ended_at (taken just before the "
        "final UPDATE+COMMIT).",
        "floors, through psycopg alone: 100 x INSERT of a cf_steps-shaped row in autocommit "
        "(one round trip and one WAL flush each): the best ratio any engine that makes each "
        "step durable before the next could reach on this machine; 100 x SELECT 1: the best "
        "for any engine that waits for the database once per step, durable or not.",
    ]
    return table


# ======================================================================================
# Part 3: events -> one-step runs per second, subprocess worker -c 2 prefork
# ======================================================================================


WARMUP = 40
SENDERS = 4  # concurrent producer threads, as a web app's request handlers send


def send_concurrently(send: Callable[[int], None], n: int) -> None:
    """Call send(i) for i in range(n) from SENDERS threads (each its own slice)."""
    threads = [
        threading.Thread(target=lambda k=k: [send(i) for i in range(k, n, SENDERS)])
        for k in range(SENDERS)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


Round = dict[str, float]  # rates of one rep: concurrent, single, batched; send_single (s)
PHASES = ("single", "batch", "concurrent")


def round_rates(
    n: int,
    *,
    send_one: Callable[[int], Any],
    send_batch: Callable[[], Any],
    send_concurrent: Callable[[int], Any],
    finished: Callable[[float], float],
) -> Round:
    """One rep, the same schedule on both sides: N serial sends, one batch of N, N sends
    from SENDERS threads; each rate runs until ``finished(started)``, the time the
    last of the phase's N runs or tasks ended."""
    started = time.time()
    for i in range(n):
        send_one(i)
    send_single = time.time() - started
    single = n / (finished(started) - started)

    started = time.time()
    send_batch()
    batched = n / (finished(started) - started)

    started = time.time()
    send_concurrently(send_concurrent, n)
    concurrent = n / (finished(started) - started)
    return {
        "concurrent": concurrent,
        "single": single,
        "batched": batched,
        "send_single": send_single,
    }


@contextmanager
def flow_side(kind: str, broker: str, n: int, deadline: float) -> Iterator[Callable[[], Round]]:
    """One store's side of part 3: a fresh store for the whole part; each call measures
    one rep with a worker started for it (so no other side's worker is running)."""
    queue = new_queue(f"events-{kind}")
    with fresh(kind) as (url, _raw):
        _app, flow = apps.flow_app(broker, url, queue)
        flow.store.engine  # noqa: B018  (migrate before the worker starts)
        counter = RunCounter(url)
        env = {"CF_BENCH_KIND": "flow", "CF_BENCH_BROKER": broker, "CF_BENCH_STORE": url}

        def batch(size: int, tag: str) -> list[Event]:
            return [Event(name=apps.ONE_STEP_EVENT, data={"i": i, "t": tag}) for i in range(size)]

        reps = itertools.count(1)

        def measure() -> Round:
            rep = next(reps)
            with celery_worker(env, queue):
                started = time.time()
                for ev in batch(WARMUP, f"warm-{rep}"):
                    flow.send(ev)
                counter.wait_for(WARMUP, started, 120)

                evs = {phase: batch(n, f"{phase}-{rep}") for phase in PHASES}
                return round_rates(
                    n,
                    send_one=lambda i: flow.send(evs["single"][i]),
                    send_batch=lambda: flow.send(evs["batch"]),
                    send_concurrent=lambda i: flow.send(evs["concurrent"][i]),
                    finished=lambda started: counter.wait_for(n, started, deadline),
                )

        try:
            yield measure
        finally:
            counter.engine.dispose()
            flow.store.engine.dispose()


@contextmanager
def plain_side(broker: str, db: int, n: int, deadline: float) -> Iterator[Callable[[], Round]]:
    """Plain Celery's side of part 3, measured per rep like :func:`flow_side`."""
    queue = new_queue("events-plain")
    app = apps.plain_app(broker, queue)
    task = app.tasks["bench.count"]
    r = redis_client(db)
    env = {"CF_BENCH_KIND": "plain", "CF_BENCH_BROKER": broker}

    def wait_for(total: int) -> float:
        wait_until(
            lambda: int(r.get(apps.COUNT_KEY) or 0) >= total, deadline, 0.02, f"{total} tasks"
        )
        return float(r.get(apps.LAST_AT_KEY) or 0)

    def measure() -> Round:
        r.delete(apps.COUNT_KEY, apps.LAST_AT_KEY)
        with celery_worker(env, queue):
            for _ in range(WARMUP):
                task.delay()
            expected = WARMUP
            wait_for(expected)

            def finished(_started: float) -> float:
                nonlocal expected
                expected += n
                return wait_for(expected)

            def send_batch() -> None:
                with app.producer_or_acquire() as producer:
                    for _ in range(n):
                        task.apply_async(producer=producer)

            return round_rates(
                n,
                send_one=lambda i: task.delay(),
                send_batch=send_batch,
                send_concurrent=lambda i: task.delay(),
                finished=finished,
            )

    try:
        yield measure
    finally:
        r.close()


def part_events(kinds: list[str], broker: str, db: int, n: int, runs: int) -> Table:
    table = Table(
        f"3. Throughput: {n:,} events -> one-step runs vs {n:,} plain tasks "
        f"(worker -c 2 prefork, median of {runs} interleaved reps)"
    )
    deadline = 180.0
    with ExitStack() as stack:
        sides = {"plain": stack.enter_context(plain_side(broker, db, n, deadline))}
        for kind in kinds:
            sides[kind] = stack.enter_context(flow_side(kind, broker, n, deadline))
        # each side warms up its own worker at the start of every rep
        got: dict[str, list[Round]] = rounds(runs, sides, warm_up=False)

    plain = got["plain"]

    def rate(side: list[Round], key: str) -> float:
        return median([r[key] for r in side])

    def ratio(side: list[Round], key: str) -> float:
        """Median over reps of the ratio within each rep (higher is better for us)."""
        ours, theirs = [r[key] for r in side], [r[key] for r in plain]
        # a send time, not a rate: the plain one over ours
        return paired(theirs, ours) if key == "send_single" else paired(ours, theirs)

    for kind in kinds:
        flow = got[kind]
        label = STORE_LABEL[kind]
        concurrent = ratio(flow, "concurrent")
        table.add(
            Row(
                f"{label}: flow.send(event) x N, {SENDERS} senders",
                fmt_rate(rate(flow, "concurrent")),
                f"{fmt_rate(rate(plain, 'concurrent'))} task.delay() x N",
                concurrent,
                ">= 0.5x",
                concurrent >= 0.5,
            )
        )
        single = ratio(flow, "single")
        table.add(
            Row(
                f"{label}: flow.send(event) x N, 1 sender",
                fmt_rate(rate(flow, "single")),
                f"{fmt_rate(rate(plain, 'single'))} task.delay() x N",
                single,
                ">= 0.5x",
                single >= 0.5,
            )
        )
        table.add(
            Row(
                f"{label}: flow.send([N events]) (info)",
                fmt_rate(rate(flow, "batched")),
                f"{fmt_rate(rate(plain, 'batched'))} one producer",
                ratio(flow, "batched"),
            )
        )
        table.add(
            Row(
                f"{label}: sending alone, N single sends (info)",
                fmt_rate(n / rate(flow, "send_single")),
                f"{fmt_rate(n / rate(plain, 'send_single'))} task.delay()",
                ratio(flow, "send_single"),
            )
        )

    def per_rep_ratios(kind: str, key: str) -> str:
        pairs = zip(got[kind], plain, strict=True)
        return "/".join(f"{f[key] / p[key]:.2f}" for f, p in pairs)

    per_rep = "; ".join(
        f"{STORE_LABEL[k]} {SENDERS} senders {per_rep_ratios(k, 'concurrent')}, "
        f"1 sender {per_rep_ratios(k, 'single')}"
        for k in kinds
    )
    table.notes += [
        "rate = N / (time from the first send until the last run/task finished); sending "
        "happens in this process while the worker runs, as in production.",
        f"two ways of sending, both held to the target: {SENDERS} threads on both sides (as "
        "a web app's request handlers send) and 1 serial sender, whose figure is bounded by "
        "its own latency: a durable commit plus the same Celery publish task.delay() does "
        "(see 'sending alone').",
        "celeryflow: each event triggers a one-step function; the end is the newest "
        "cf_runs.ended_at once the round's N runs are completed (polled every 20 ms by "
        "counting only the round's runs through an index, and reading ended_at once, so "
        "the poll takes little CPU from what it measures).",
        "plain: a trivial task that INCRs a Redis counter and SETs its time.time() (one "
        "pipelined round trip); the end is that time once the counter reaches N.",
        "the same worker command for both: python -m celery -A bench/apps.py worker -c 2 "
        "--pool prefork --without-gossip --without-mingle --without-heartbeat; "
        f"{WARMUP} warm-up runs/tasks each rep; same Redis db, no result backend.",
        "'sending alone' ratio = plain send time / celeryflow send time.",
        f"interleaved: each rep measures plain Celery and each store once, one after the "
        f"other in an order rotated per rep, each with a worker started for it and no other "
        f"worker running; rates are medians over reps, ratios the median of the ratios "
        f"within each rep (per rep: {per_rep}).",
    ]
    return table


# ======================================================================================


PARTS = ("steps", "chain", "events")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--only", default=",".join(PARTS), help="comma-separated: steps,chain,events"
    )
    parser.add_argument("--stores", default="postgresql,sqlite", help="postgresql,sqlite")
    parser.add_argument("--runs", type=int, default=5, help="timed repeats for parts 1 and 2")
    parser.add_argument("--events", type=int, default=1000, help="N for part 3")
    parser.add_argument("--event-runs", type=int, default=5, help="timed repeats for part 3")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    kinds = [k.strip() for k in args.stores.split(",") if k.strip()]
    for p in parts:
        if p not in PARTS:
            parser.error(f"unknown part {p!r}; choose from {', '.join(PARTS)}")
    for k in kinds:
        if k not in STORE_LABEL:
            parser.error(f"unknown store {k!r}; choose from postgresql, sqlite")

    began = time.time()
    print(f"# python bench/engine.py {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip())
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    for line in machine_info():
        print(f"# {line}")
    print(flush=True)
    tables: list[Table] = []
    with fresh_redis_db() as db:
        broker = redis_url(db)
        steps: dict[str, Callable[[], Table]] = {
            "steps": lambda: part_steps(kinds, broker, args.runs),
            "chain": lambda: part_chain(kinds, broker, db, args.runs),
            "events": lambda: part_events(kinds, broker, db, args.events, args.event_runs),
        }
        for part in parts:
            t0 = time.time()
            table = steps[part]()
            table.notes.append(f"part took {time.time() - t0:.0f} s")
            tables.append(table)
            print(table.render(), end="\n\n", flush=True)
    results = [r.passed for t in tables for r in t.rows if r.passed is not None]
    print(
        f"# {sum(1 for r in results if r)} of {len(results)} targets met; "
        f"total {time.time() - began:.0f} s; load average "
        + " ".join(f"{x:.2f}" for x in os.getloadavg())
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
