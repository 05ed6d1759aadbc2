"""Issue 15: the dashboard's pages rendered server-side on a big PostgreSQL store.

A fresh ``cf_bench_<hex>`` database is migrated (and dropped after), then filled with
set-based ``INSERT ... SELECT generate_series`` with its indexes and primary keys
dropped and rebuilt after (the same DDL, read from the catalog): RUNS runs (20
functions, mostly completed, some failed, queued, sleeping, waiting, cancelled), one
event per run (20 names), STEPS_PER_RUN steps per run and one run of --big-run steps,
a waiter per waiting run; then VACUUM ANALYZE (as autovacuum would leave it). About
2 min for 1,000,000 runs and 20,000,000 steps here. Each page is rendered by
``Dashboard.handle`` in this process (query + template, no HTTP): --rounds passes
over every page (interleaved, so a burst of load from the machine's other users lands
on all of them) of --repeat calls each, after one warm-up; median and p95 of all
calls. Target: median under 100 ms for the runs pages and a run's page.

    python bench/dashboard.py                       # 1,000,000 runs, 20,000,000 steps
    python bench/dashboard.py --runs 100000 --steps-per-run 5   # a quick look
    python bench/dashboard.py --keep big    # fill cf_bench_big and keep it; run again
                                            # to measure without refilling; drop it after
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PG_BASE, Row, Table, fmt_time, fresh_postgres, machine_info, median

from celeryflow.dashboard import Auth, Dashboard, Request
from celeryflow.store import Store
from celeryflow.store.tables import runs, steps

TARGET = 0.100  # seconds, server-side render
REPEAT = 20
FUNCTIONS = 20
CHUNK = 250_000  # runs whose steps one INSERT writes

# status by i % 100: 90 completed, 6 failed, 1 each of the others
STATUS_SQL = """CASE
  WHEN i % 100 < 90 THEN 'completed' WHEN i % 100 < 96 THEN 'failed'
  WHEN i % 100 = 96 THEN 'queued' WHEN i % 100 = 97 THEN 'sleeping'
  WHEN i % 100 = 98 THEN 'waiting' ELSE 'cancelled' END"""


def run_id(i: int, total: int, base_ms: int) -> str:
    """Run i's id, shaped as ``Flow``'s (creation milliseconds in hex, then random)."""
    return f"{base_ms - (total - i) * 500:012x}" + hashlib.md5(f"run-{i}".encode()).hexdigest()[:20]


def _detach_indexes(conn: psycopg.Connection[Any], tables: list[str]) -> list[str]:
    """Drop the indexes and primary keys of ``tables``; returns the DDL that puts them
    back exactly (``pg_get_constraintdef``/``pg_get_indexdef``). Building an index once
    over sorted input is several times faster than growing it row by row."""
    restore: list[str] = []
    for table, name, definition in conn.execute(
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) "
        "FROM pg_constraint WHERE contype = 'p' AND conrelid::regclass::text = ANY(%s)",
        (tables,),
    ).fetchall():
        restore.append(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
        conn.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
    for name, definition in conn.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = ANY(%s)", (tables,)
    ).fetchall():
        restore.append(definition)
        conn.execute(f'DROP INDEX "{name}"')
    return restore


def fill(
    raw_url: str, total: int, per_run: int, budget: float, base: datetime, big_run: int
) -> tuple[int, float, float]:
    """Fill the store; returns (steps written, seconds for runs+events, for steps).
    Run i is created at ``base`` - (total - i) * 500 ms; its id sorts by that time, as
    real run ids do. Indexes and primary keys are dropped during the fill and rebuilt
    after it (the same DDL), so the fill is a few set-based INSERTs and one sort per
    index. Run 1 (the oldest) gets ``big_run`` steps, for the run page of a long run."""
    base_ms = int(base.timestamp() * 1000)
    at = (
        f"(TIMESTAMP '{base.replace(tzinfo=None).isoformat()}' - ({total} - i) * interval '500 ms')"
    )
    rid = (
        f"(lpad(to_hex({base_ms}::bigint - ({total} - i) * 500), 12, '0') "
        "|| substr(md5('run-' || i), 1, 20))"
    )
    t0 = time.monotonic()
    with psycopg.connect(raw_url, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        conn.execute("SET maintenance_work_mem = '512MB'")
        conn.execute("SET work_mem = '256MB'")
        restore = _detach_indexes(conn, ["cf_events", "cf_runs", "cf_waits", "cf_steps"])
        conn.execute(
            f"""INSERT INTO cf_events (id, name, data, ts, received_at)
            SELECT 'ev-' || lpad(i::text, 8, '0'), 'bench/ev-' || (i % {FUNCTIONS}),
                   '{{"order_id": ' || i || ', "note": "<b>bench</b>"}}',
                   1700000000000 + i,
                   {at}
            FROM generate_series(1, {total}) AS i"""
        )
        conn.execute(
            f"""INSERT INTO cf_runs (id, function_id, event_id, events, status, output, error,
                attempt, fence, dispatches, wake_at, due_at, created_at, started_at, ended_at)
            SELECT {rid}, 'fn-' || (i % {FUNCTIONS}), 'ev-' || lpad(i::text, 8, '0'),
                   '[{{"name": "bench/ev-' || (i % {FUNCTIONS}) || '", "data": {{}}, "id": "ev-'
                     || i || '", "ts": 1700000000000}}]',
                   {STATUS_SQL},
                   CASE WHEN i % 100 < 90 THEN '{{"ok": true}}' END,
                   CASE WHEN i % 100 BETWEEN 90 AND 95
                     THEN '{{"type": "ValueError", "message": "bench"}}' END,
                   0, 1, 1,
                   CASE WHEN i % 100 IN (97, 98) THEN now() AT TIME ZONE 'UTC' + interval '1 h' END,
                   CASE WHEN i % 100 BETWEEN 96 AND 98
                     THEN now() AT TIME ZONE 'UTC' + interval '1 h' END,
                   {at}, {at} + interval '5 ms',
                   CASE WHEN i % 100 < 96 OR i % 100 = 99 THEN
                     {at} + (20 + i % 200) * interval '1 ms' END
            FROM generate_series(1, {total}) AS i"""
        )
        conn.execute(
            f"""INSERT INTO cf_waits (run_id, key, kind, event_name, match_field, match_value,
                expires_at, created_at)
            SELECT {rid}, 'paid', 'event', 'bench/paid', 'data.order_id', i::text,
                   now() AT TIME ZONE 'UTC' + interval '1 h', now() AT TIME ZONE 'UTC'
            FROM generate_series(1, {total}) AS i WHERE i % 100 = 98"""
        )
        runs_seconds = time.monotonic() - t0
        t1 = time.monotonic()
        written = 0
        for first in range(1, total + 1, CHUNK):
            if time.monotonic() - t1 > budget:
                break
            last = min(total, first + CHUNK - 1)
            conn.execute(
                f"""INSERT INTO cf_steps (run_id, key, name, position, kind, status, output,
                    attempts, started_at, ended_at)
                SELECT {rid}, 'step-' || lpad(s::text, 5, '0'), 'step-' || s, s, 'run',
                       'completed', '{{"n": ' || s || '}}', 1 + (s % 7 = 3)::int,
                       {at} + s * interval '1 ms', {at} + (s + 1) * interval '1 ms'
                FROM generate_series({first}, {last}) AS i,
                     generate_series(0, CASE WHEN i = 1 THEN {big_run - 1}
                                             ELSE {per_run - 1} END) AS s"""
            )
            written += (last - first + 1) * per_run + (big_run - per_run if first == 1 else 0)
            print(f"  steps: {written:,} ({time.monotonic() - t1:.0f} s)", flush=True)
        for statement in restore:
            t = time.monotonic()
            conn.execute(statement)
            print(f"  {statement[:70]}... ({time.monotonic() - t:.0f} s)", flush=True)
        conn.execute("VACUUM ANALYZE")
    return written, runs_seconds, time.monotonic() - t1


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(
    cases: dict[str, Callable[[], Any]], rounds: int, repeat: int
) -> dict[str, list[float]]:
    """``rounds`` passes over every case (interleaved, so a burst of load on the shared
    machine lands on all of them), ``repeat`` timed calls each after one warm-up."""
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():
        fn()  # warm-up: plans cached, pages in the buffer cache
    for _ in range(rounds):
        for name, fn in cases.items():
            for _ in range(repeat):
                t = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t)
    return samples


@contextlib.contextmanager
def database(keep: str | None) -> Iterator[tuple[str, str, bool]]:
    """A fresh ``cf_bench_<hex>`` database dropped afterwards, or with ``--database``
    one a previous ``--keep`` run filled (yields urls and whether it needs filling)."""
    if keep is None:
        with fresh_postgres() as (url, raw):
            yield url, raw, True
        return
    name = keep if keep.startswith("cf_bench_") else f"cf_bench_{keep}"
    raw = f"{PG_BASE}/{name}"
    with psycopg.connect(f"{PG_BASE}/postgres", autocommit=True) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            admin.execute(f'CREATE DATABASE "{name}"')
    yield raw.replace("postgresql://", "postgresql+psycopg://", 1), raw, not exists


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--steps-per-run", type=int, default=20)
    parser.add_argument("--big-run", type=int, default=5000, help="steps of one long run")
    parser.add_argument("--fill-budget", type=float, default=3600.0, help="seconds for steps")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per round")
    parser.add_argument(
        "--keep",
        metavar="NAME",
        help="fill cf_bench_NAME and keep it, or reuse it if it exists (drop it yourself)",
    )
    args = parser.parse_args()
    print(f"# python bench/dashboard.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"# {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC")
    for line in machine_info():
        print(f"# {line}")
    with database(args.keep) as (url, raw, empty):
        store = Store(url, auto_migrate=False)
        store.migrate()
        with store.engine.connect() as conn:
            newest_at = conn.execute(sa.select(sa.func.max(runs.c.created_at))).scalar()
        if empty or newest_at is None:
            base = datetime.now(timezone.utc)
            written, runs_s, steps_s = fill(
                raw, args.runs, args.steps_per_run, args.fill_budget, base, args.big_run
            )
            print(
                f"filled {args.runs:,} runs + events in {runs_s:.0f} s, {written:,} steps "
                f"in {steps_s:.0f} s (indexes rebuilt, VACUUM ANALYZE included)"
            )
        else:
            base = newest_at
            with store.engine.connect() as conn:
                written = conn.execute(
                    sa.text("SELECT reltuples::bigint FROM pg_class WHERE relname = 'cf_steps'")
                ).scalar_one()
            runs_s = steps_s = 0.0
            print(f"reusing {raw.rsplit('/', 1)[1]}: ~{written:,} steps")
        dash = Dashboard(store=store, auth=Auth())
        engine = store.engine

        def page(path: str, **query: str) -> Callable[[], Any]:
            def render() -> None:
                answer = dash.handle(Request("GET", path, query=query))
                assert answer.status == 200, (path, query, answer.body[:300])

            return render

        def sql(statement: Any) -> Callable[[], Any]:
            def run() -> None:
                with engine.connect() as conn:
                    conn.execute(statement).all()

            return run

        newest = sa.select(runs.c.id).order_by(runs.c.created_at.desc(), runs.c.id.desc())
        base_ms = int(base.timestamp() * 1000)
        with engine.connect() as conn:
            mid = conn.execute(
                sa.select(runs.c.created_at, runs.c.id).where(
                    runs.c.id == run_id(args.runs // 2, args.runs, base_ms)
                )
            ).one()
            detail_id = conn.execute(
                sa.select(runs.c.id)
                .where(runs.c.status == "failed", runs.c.created_at > mid.created_at)
                .limit(1)
            ).scalar_one()
            big_id = run_id(1, args.runs, base_ms)
            big_steps = conn.execute(
                sa.select(sa.func.count()).where(steps.c.run_id == big_id)
            ).scalar_one()
        cursor = f"{mid.created_at.isoformat()}~{mid.id}"
        day_ago = base - timedelta(hours=30)
        window = {
            "since": day_ago.strftime("%Y-%m-%dT%H:%M:%S"),
            "until": (day_ago + timedelta(hours=6)).strftime("%Y-%m-%dT%H:%M:%S"),
        }
        targeted: dict[str, Callable[[], Any]] = {
            "runs page, newest 50": page("/runs"),
            f"runs page, page at the {args.runs // 2:,}th run (keyset)": page(
                "/runs", after=cursor
            ),
            "runs page, function=fn-7": page("/runs", function="fn-7"),
            "runs page, status=failed": page("/runs", status="failed"),
            "runs page, status=queued": page("/runs", status="queued"),
            "runs page, status=failed,cancelled": page("/runs", status="failed,cancelled"),
            "runs page, event=bench/ev-3": page("/runs", event="bench/ev-3"),
            "runs page, a 6 h range a day ago": page("/runs", **window),
            "runs live poll (partial)": page("/runs", partial="1"),
            f"run page, {args.steps_per_run} steps": page(f"/runs/{detail_id}"),
            f"run page, {big_steps:,} steps": page(f"/runs/{big_id}"),
            f"run live poll, {big_steps:,} steps": page(f"/runs/{big_id}", partial="1"),
        }
        info: dict[str, Callable[[], Any]] = {
            "events page, newest 50": page("/events"),
            f"waiting page, 200 of {args.runs // 100:,} waiters": page("/waiting"),
            "functions page, last 1 h": page("/functions", window="1h"),
            "functions page, last 24 h": page("/functions"),
            "functions page, last 7 d": page("/functions", window="7d"),
        }
        baselines = {
            "bare query: newest 50 ids": sql(newest.limit(51)),
            f"bare query: a run's {args.steps_per_run} steps by primary key": sql(
                sa.select(steps).where(steps.c.run_id == detail_id)
            ),
        }
        samples = measure({**targeted, **info, **baselines}, args.rounds, args.repeat)
        table = Table(
            f"Dashboard pages rendered server-side: {args.runs:,} runs, {written:,} steps "
            f"(PostgreSQL; {args.rounds} rounds x {args.repeat} calls, interleaved)"
        )
        table.HEADER = ("measure", "median", "p95", "p95/median", "target", "result")
        for name, values in samples.items():
            med, p95 = median(values), percentile(values, 0.95)
            goal = name in targeted
            table.add(
                Row(
                    name,
                    fmt_time(med),
                    fmt_time(p95),
                    p95 / med,
                    f"< {TARGET * 1000:.0f} ms" if goal else "",
                    (med < TARGET) if goal else None,
                )
            )
        table.notes += [
            "celeryflow: Dashboard.handle(Request('GET', path, query)) in this process: the "
            "store views' queries (SQLAlchemy Core, psycopg 3) and the Jinja2 render; no HTTP. "
            "The target (median < 100 ms) is for the runs pages and a run's page; the rest "
            "is shown for information.",
            "bare query: the cheapest read a page could make, on the same engine: what the "
            "machine's load alone costs one round trip.",
            (
                f"fill: {runs_s:.0f} s for runs, events and waiters; {steps_s:.0f} s for steps "
                "and rebuilding every index (INSERT ... SELECT generate_series with the "
                "indexes dropped, then the same CREATE INDEX / ADD PRIMARY KEY, VACUUM ANALYZE)."
                if runs_s
                else "fill: reused a database an earlier --keep run filled."
            ),
        ]
        print(table.render())
        engine.dispose()


if __name__ == "__main__":
    main()
