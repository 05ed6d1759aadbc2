"""Scale (issue 17, part 5): the hot paths on a PostgreSQL store holding 1,000,000
finished runs against an empty store, and the ceiling of one PostgreSQL store.

    python bench/scale.py                      # 1,000,000 runs, both parts
    python bench/scale.py --runs 100000 --rounds 3 --only paths
    python bench/scale.py --only ceiling --workers 2,4

Part 1 (paths): two fresh databases with the same Flow (retention off): one "empty"
(100 finished runs, so that ``list_runs(limit=100)`` returns as many rows as on the
full one from the first round), one filled with ``--runs`` completed one-step runs
(each with its cf_events row and its one cf_steps row, created over the last 30 days,
all of the measured function, so the function's own indexes hold them all) by bulk
``INSERT ... SELECT generate_series`` in SQL, not through the engine, then ``VACUUM
ANALYZE``. Each round times, on both stores in an order rotated per round, the median
of ``--calls`` calls of each path:

* send       -- ``flow.send(event)`` of the one-step function (the event and run
                inserts, the commit, the doorbell on a private Redis no worker reads);
* claim      -- ``store.claim`` of a run just sent (the claim's UPDATE .. RETURNING
                and the memo load), as a worker does first;
* reconcile  -- one ``Reconciler.run_once()`` pass (the due query, the rings,
                cron slots; retention off so no prune);
* list_runs  -- ``flow.list_runs(limit=100)`` unfiltered, by function, by status
                ``running`` and by event id.

The ratio full / empty is taken within each round; target <= 1.2x. Afterwards each
path's statements (captured from the engine) are EXPLAINed on the full store and the
index or scan each uses is printed.

Part 2 (ceiling): one fresh PostgreSQL store and a real ``celery worker --pool prefork
-c N`` for each N of ``--workers``: 1,000 one-step runs (runs/s) and 20 runs of 100
steps (steps/s), sent in one batch, from the first send until the last ``ended_at``.

Needs PostgreSQL and Redis as in tests/services.py (see bench/common.py to override).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import timedelta
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
    machine_info,
    median,
    redis_url,
    rounds,
)

from celeryflow import Event, Flow  # noqa: E402
from celeryflow.durations import utcnow  # noqa: E402
from celeryflow.reconciler import Reconciler  # noqa: E402

FUNCTION = "one-step"

# One statement per table for each batch of ids :lo..:hi out of :n. Ids have the
# engine's shape (12 hex digits of milliseconds, 20 random-looking hex), times are
# naive UTC as the store's, spread over the 30 days before :base.
SERIES = """(SELECT g, TIMESTAMP ':base' - make_interval(secs => g * 2.592e6 / :n) AS t
             FROM generate_series(:lo, :hi) g) s"""
RUN_ID = (
    "lpad(to_hex((extract(epoch FROM t) * 1000)::bigint), 12, '0') || substr(md5(g::text), 1, 20)"
)
FILL = [
    f"""
    INSERT INTO cf_events (id, name, data, ts, received_at)
    SELECT 'fill-' || g, 'bench/one', '{{"i":' || g || '}}',
           (extract(epoch FROM t) * 1000)::bigint, t
    FROM {SERIES}
    """,
    f"""
    INSERT INTO cf_runs (id, function_id, event_id, events, status, output, error, attempt,
                         fence, dispatches, created_at, started_at, ended_at)
    SELECT {RUN_ID}, 'one-step', 'fill-' || g,
           '[{{"name":"bench/one","data":{{"i":' || g || '}},"id":"fill-' || g || '","ts":'
               || (extract(epoch FROM t) * 1000)::bigint || '}}]',
           'completed', '{{"s":{{"ok":true,"n":1}}}}', NULL, 1, 1, 1,
           t, t + interval '2 ms', t + interval '5 ms'
    FROM {SERIES}
    """,
    f"""
    INSERT INTO cf_steps (run_id, key, name, position, kind, status, output, error,
                          attempts, started_at, ended_at)
    SELECT {RUN_ID}, 's', 's', 0, 'run', 'completed', '{{"ok":true,"n":1}}', NULL, 1,
           t + interval '2 ms', t + interval '4 ms'
    FROM {SERIES}
    """,
]
BATCH = 100_000
LIMIT = 100  # list_runs(limit=...)


def fill(raw_url: str, n: int) -> float:
    """Bulk-insert ``n`` completed runs through psycopg alone (no statement timeout, a
    commit per batch); returns the seconds taken, VACUUM ANALYZE included."""
    import psycopg

    started = time.perf_counter()
    base = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    with psycopg.connect(raw_url, autocommit=True) as conn:
        for lo in range(1, n + 1, BATCH):
            hi = min(lo + BATCH - 1, n)
            with conn.transaction():
                for sql in FILL:
                    text = sql.replace(":base", base).replace(":n", str(int(n)))
                    conn.execute(text.replace(":lo", str(lo)).replace(":hi", str(hi)))
        conn.execute("VACUUM ANALYZE")
    return time.perf_counter() - started


# ======================================================================================
# Part 1: the hot paths, full against empty
# ======================================================================================


class Paths:
    """The hot paths of one store, each a callable timing ``calls`` calls."""

    def __init__(self, flow: Flow, calls: int) -> None:
        self.flow = flow
        self.calls = calls
        self.reconciler = Reconciler(flow)
        self.owner = secrets.token_hex(8)
        self.seq = 0
        self.last_event = ""

    def _send(self) -> str:
        self.seq += 1
        [event_id] = self.flow.send(Event(name=apps.ONE_STEP_EVENT, data={"i": self.seq}))
        return event_id

    def timed(self, call: Callable[[], Any], before: Callable[[], Any] | None = None) -> float:
        took = []
        for _ in range(self.calls):
            arg = before() if before else None
            started = time.perf_counter()
            call() if before is None else call(arg)  # type: ignore[call-arg]
            took.append(time.perf_counter() - started)
        return median(took)

    def send(self) -> None:
        self.last_event = self._send()

    def new_run(self) -> str:
        event_id = self._send()
        [run] = self.flow.list_runs(event_id=event_id, limit=1)
        return run.id

    def claim(self, run_id: str) -> None:
        now = utcnow()
        if self.flow.store.claim(run_id, self.owner, now, now + timedelta(minutes=5)) is None:
            raise RuntimeError(f"could not claim run {run_id}")

    def measures(self) -> dict[str, Callable[[], float]]:
        lr = self.flow.list_runs
        return {
            "send": lambda: self.timed(self.send),
            "claim": lambda: self.timed(self.claim, self.new_run),
            "reconcile": lambda: self.timed(self.reconciler.run_once),
            "list_runs()": lambda: self.timed(lambda: lr(limit=LIMIT)),
            "list_runs(function_id)": lambda: self.timed(
                lambda: lr(function_id=FUNCTION, limit=LIMIT)
            ),
            "list_runs(status=running)": lambda: self.timed(
                lambda: lr(status="running", limit=LIMIT)
            ),
            "list_runs(event_id)": lambda: self.timed(
                lambda: lr(event_id=self.last_event or "none", limit=LIMIT)
            ),
        }


@contextlib.contextmanager
def store(broker: str, queue: str) -> Iterator[tuple[Flow, str]]:
    """A Flow on a fresh PostgreSQL database, and the database's libpq URL."""
    with fresh_postgres() as (url, raw):
        _app, flow = apps.flow_app(broker, url, queue)
        flow.settings.retention = None  # retention off: nothing is pruned
        flow.store.engine  # noqa: B018  (migrate)
        try:
            yield flow, raw
        finally:
            flow.store.engine.dispose()


SCAN = re.compile(
    r"(Index Only Scan(?: Backward)? using \S+|Index Scan(?: Backward)? using \S+"
    r"|Bitmap Index Scan on \S+|Seq Scan on \S+)"
)


def explain(flow: Flow, path: Callable[[], float]) -> list[str]:
    """The scans the statements of one call of ``path`` use (EXPLAIN, not run)."""
    captured: list[tuple[str, Any]] = []

    def listen(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        head = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else ""
        if head in ("SELECT", "UPDATE", "DELETE", "WITH"):
            captured.append((statement, params))

    eng = flow.store.engine
    sa.event.listen(eng, "before_cursor_execute", listen)
    try:
        path()
    finally:
        sa.event.remove(eng, "before_cursor_execute", listen)
    found: list[str] = []
    with eng.connect() as conn:
        for statement, params in captured:
            if statement.strip().upper().startswith("SELECT 1"):
                continue
            try:
                with conn.begin_nested():
                    result = conn.exec_driver_sql(f"EXPLAIN (COSTS OFF) {statement}", params)
                    plan = [str(line) for line in result.scalars()] if result.returns_rows else []
            except sa.exc.DBAPIError as exc:  # shown, not fatal: the timings are the point
                found.append(f"(EXPLAIN failed: {str(exc.orig).splitlines()[0]})")
                continue
            for line in plan:
                for scan in SCAN.findall(line):
                    if scan not in found:
                        found.append(scan)
        conn.rollback()
    return found


def part_paths(broker: str, n: int, n_rounds: int, calls: int) -> Table:
    table = Table(
        f"1. Hot paths: a store with {n:,} finished runs vs an empty one ({LIMIT} runs) "
        f"(median of {calls} calls per round, {n_rounds} rotating rounds)"
    )
    with ExitStack() as stack:
        empty, empty_raw = stack.enter_context(store(broker, f"cf-scale-{os.getpid()}-empty"))
        full, full_raw = stack.enter_context(store(broker, f"cf-scale-{os.getpid()}-full"))
        # list_runs(limit=LIMIT) returns LIMIT rows from the full store from the first
        # round; the "empty" one holds as many finished runs, or its answer would be
        # shorter (only the runs the rounds sent so far) and cheaper for that alone
        fill(empty_raw, LIMIT)
        took = fill(full_raw, n)
        print(f"# filled {n:,} runs in {took:.0f} s", flush=True)
        sides = {"empty": Paths(empty, calls), "full": Paths(full, calls)}
        measures = {
            f"{name}@{side}": fn
            for side, paths in sides.items()
            for name, fn in paths.measures().items()
        }
        got = rounds(n_rounds, measures)
        for key, values in got.items():  # kept in the log if what follows fails
            print(f"# {key}: " + " ".join(fmt_time(v) for v in values), flush=True)
        scans = {name: explain(full, fn) for name, fn in Paths(full, 1).measures().items()}
        with full.store.engine.connect() as conn:
            counts = conn.exec_driver_sql(
                "SELECT status, count(*) FROM cf_runs GROUP BY status ORDER BY 2 DESC"
            ).all()
    for name in sides["empty"].measures():
        ours, base = got[f"{name}@full"], got[f"{name}@empty"]
        ratios = [f / e for f, e in zip(ours, base, strict=True)]
        ratio = median(ratios)
        table.add(
            Row(
                f"{name} (range {min(ratios):.2f}-{max(ratios):.2f})",
                fmt_time(median(ours)),
                f"{fmt_time(median(base))} empty",
                ratio,
                "<= 1.2x",
                ratio <= 1.2,
            )
        )
    table.notes += [f"{name}: {', '.join(s) or 'no scan'}" for name, s in scans.items()]
    table.notes += [
        "the lines above: the scans of each path's SELECT/UPDATE/DELETE statements "
        "(captured from the engine, EXPLAIN (COSTS OFF) on the full store).",
        f"full store at the end: {', '.join(f'{s} {c:,}' for s, c in counts)} runs; "
        f"filled by INSERT ... SELECT generate_series in {took:.0f} s (VACUUM ANALYZE "
        "included), all runs of the measured function, created over the last 30 days.",
        "rounds: one warm-up, then each round times every path on both stores in an "
        "order rotated per round; the ratio (full / empty) is taken within each round, "
        "its median shown and its range in brackets. Other jobs load this 2-core VM.",
        "no worker: the runs sent stay queued (claimed ones running), on both stores "
        "alike; each store's Flow has retention off.",
    ]
    return table


# ======================================================================================
# Part 2: the ceiling of one PostgreSQL store
# ======================================================================================


def part_ceiling(broker: str, workers: list[int], runs_n: int, long_runs: int) -> Table:
    table = Table(
        f"2. Ceiling of one PostgreSQL store: {runs_n:,} one-step runs and {long_runs} "
        "runs of 100 steps, sent in one batch, worker --pool prefork -c N"
    )
    for n in workers:
        with store(broker, f"cf-scale-{os.getpid()}-ceiling-{n}") as (flow, _raw):
            url = str(flow.store.engine.url.render_as_string(hide_password=False))
            env = {"CF_BENCH_KIND": "flow", "CF_BENCH_BROKER": broker, "CF_BENCH_STORE": url}
            counter = RunCounter(url)
            queue = f"cf-scale-{os.getpid()}-ceiling-{n}"
            with celery_worker(env, queue, concurrency=n):
                started = time.time()
                flow.send([Event(name=apps.ONE_STEP_EVENT, data={"w": 1})])
                counter.wait_for(1, started, 120)  # the worker is up
                started = time.time()
                flow.send([Event(name=apps.ONE_STEP_EVENT, data={"i": i}) for i in range(runs_n)])
                runs_rate = runs_n / (counter.wait_for(runs_n, started, 900) - started)
                started = time.time()
                flow.send([Event(name=apps.HUNDRED_EVENT, data={"i": i}) for i in range(long_runs)])
                steps_rate = (
                    long_runs * apps.STEPS / (counter.wait_for(long_runs, started, 900) - started)
                )
            counter.engine.dispose()
        table.add(Row(f"-c {n}: one-step runs", fmt_rate(runs_rate), "", None))
        table.add(Row(f"-c {n}: steps of 100-step runs", fmt_rate(steps_rate), "", None))
    table.notes += [
        "rate = runs (or steps) / (first send until the last run's ended_at); the worker "
        "(python -m celery -A bench/apps.py worker --pool prefork -c N, Redis broker) and "
        "PostgreSQL share this 2-core VM with the sender and with other jobs, so the "
        "figure is the machine's ceiling, not the store's alone.",
    ]
    return table


# ======================================================================================


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--only", default="paths,ceiling", help="paths,ceiling")
    parser.add_argument("--runs", type=int, default=1_000_000, help="finished runs in the store")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=15, help="calls per path per round")
    parser.add_argument("--workers", default="2,4", help="worker concurrencies for the ceiling")
    parser.add_argument("--ceiling-runs", type=int, default=1000)
    parser.add_argument("--long-runs", type=int, default=20)
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    workers = [int(w) for w in args.workers.split(",") if w.strip()]

    began = time.time()
    print(f"# python bench/scale.py {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip())
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    for line in machine_info():
        print(f"# {line}")
    print(flush=True)
    with fresh_redis_db() as db:
        broker = redis_url(db)
        if "paths" in parts:
            t0 = time.time()
            table = part_paths(broker, args.runs, args.rounds, args.calls)
            table.notes.append(f"part took {time.time() - t0:.0f} s")
            print(table.render(), end="\n\n", flush=True)
        if "ceiling" in parts:
            t0 = time.time()
            table = part_ceiling(broker, workers, args.ceiling_runs, args.long_runs)
            table.notes.append(f"part took {time.time() - t0:.0f} s")
            print(table.render(), end="\n\n", flush=True)
    print(
        f"# total {time.time() - began:.0f} s; load average "
        + " ".join(f"{x:.2f}" for x in os.getloadavg())
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
