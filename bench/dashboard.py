"""Issue 15: the dashboard's pages rendered server-side on a big PostgreSQL store.

A fresh ``cf_bench_<hex>`` database is migrated, then filled with bulk
``INSERT ... SELECT generate_series``: RUNS runs (20 functions, mostly completed, some
failed, queued, sleeping, waiting), one event per run (20 names), STEPS_PER_RUN steps per
run (as many as fit in --fill-budget seconds: each chunk is one INSERT of 100,000 runs'
steps), a waiter per waiting run; then ANALYZE. Each page is rendered by
``Dashboard.handle`` in this process (query + template, no HTTP), 20 times after one
warm-up; the median is compared with a baseline measured the same way: the bare indexed
query the page needs most (SQLAlchemy Core on the same engine), so the ratio is what
the page adds on top of its database read.

    python bench/dashboard.py                       # 1,000,000 runs, up to 20,000,000 steps
    python bench/dashboard.py --runs 100000 --steps-per-run 5   # a quick look
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Row, Table, fmt_time, fresh_postgres, machine_info, median

from celeryflow.dashboard import Auth, Dashboard, Request
from celeryflow.store import Store
from celeryflow.store.tables import runs, steps

TARGET = 0.100  # seconds, server-side render
REPEAT = 20
FUNCTIONS = 20
CHUNK = 100_000  # runs whose steps one INSERT writes

# status by i % 100: 90 completed, 6 failed, 1 each of the others
STATUS_SQL = """CASE
  WHEN i % 100 < 90 THEN 'completed' WHEN i % 100 < 96 THEN 'failed'
  WHEN i % 100 = 96 THEN 'queued' WHEN i % 100 = 97 THEN 'sleeping'
  WHEN i % 100 = 98 THEN 'waiting' ELSE 'cancelled' END"""


def run_id(i: int, total: int, base_ms: int) -> str:
    """Run i's id, shaped as ``Flow``'s (creation milliseconds in hex, then random)."""
    return f"{base_ms - (total - i) * 500:012x}" + hashlib.md5(f"run-{i}".encode()).hexdigest()[:20]


def fill(
    raw_url: str, total: int, per_run: int, budget: float, base: datetime
) -> tuple[int, float, float]:
    """Fill the store; returns (steps written, seconds for runs+events, for steps).
    Run i is created at ``base`` - (total - i) * 500 ms; its id sorts by that time, as
    real run ids do (so the steps' primary key grows at its end, as in production)."""
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
        conn.execute("SET maintenance_work_mem = '256MB'")
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
                SELECT {rid}, 'step-' || lpad(s::text, 2, '0'), 'step-' || s, s, 'run',
                       'completed', '{{"n": ' || s || '}}', 1 + (s % 7 = 3)::int,
                       {at} + s * interval '1 ms', {at} + (s + 1) * interval '1 ms'
                FROM generate_series({first}, {last}) AS i,
                     generate_series(0, {per_run - 1}) AS s"""
            )
            written += (last - first + 1) * per_run
            print(f"  steps: {written:,} ({time.monotonic() - t1:.0f} s)", flush=True)
        conn.execute("ANALYZE")
    return written, runs_seconds, time.monotonic() - t1


def timed(fn: Callable[[], Any], repeat: int = REPEAT) -> float:
    fn()  # warm-up: plans cached, pages in the buffer cache
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--steps-per-run", type=int, default=20)
    parser.add_argument("--fill-budget", type=float, default=1500.0, help="seconds for steps")
    args = parser.parse_args()
    print(f"# python bench/dashboard.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"# {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC")
    for line in machine_info():
        print(f"# {line}")
    with fresh_postgres() as (url, raw):
        store = Store(url, auto_migrate=False)
        store.migrate()
        base = datetime.now(timezone.utc)
        written, runs_s, steps_s = fill(raw, args.runs, args.steps_per_run, args.fill_budget, base)
        print(
            f"filled {args.runs:,} runs + events in {runs_s:.0f} s, {written:,} steps in "
            f"{steps_s:.0f} s"
        )
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
                sa.select(runs.c.id).where(runs.c.status == "failed").limit(1)
            ).scalar_one()
        cursor = f"{mid.created_at.isoformat()}~{mid.id}"
        day_ago = datetime.now(timezone.utc) - timedelta(hours=30)
        window = {
            "since": day_ago.strftime("%Y-%m-%dT%H:%M:%S"),
            "until": (day_ago + timedelta(hours=6)).strftime("%Y-%m-%dT%H:%M:%S"),
        }
        base_page = sql(newest.limit(51))
        base_steps = sql(sa.select(steps).where(steps.c.run_id == detail_id))
        cases: list[tuple[str, Callable[[], Any], str, Callable[[], Any]]] = [
            ("runs page, newest 50", page("/runs"), "newest 50 ids", base_page),
            (
                "runs page, page at the 500,000th run (keyset)",
                page("/runs", after=cursor),
                "same page by OFFSET 500000",
                sql(newest.offset(args.runs // 2).limit(51)),
            ),
            (
                "runs page, function=fn-7",
                page("/runs", function="fn-7"),
                "newest 50 ids",
                base_page,
            ),
            (
                "runs page, status=failed",
                page("/runs", status="failed"),
                "newest 50 ids",
                base_page,
            ),
            (
                "runs page, status=queued",
                page("/runs", status="queued"),
                "newest 50 ids",
                base_page,
            ),
            (
                "runs page, event=bench/ev-3",
                page("/runs", event="bench/ev-3"),
                "newest 50 ids",
                base_page,
            ),
            (
                "runs page, a 6 h range a day ago",
                page("/runs", **window),
                "newest 50 ids",
                base_page,
            ),
            ("runs live poll (partial)", page("/runs", partial="1"), "newest 50 ids", base_page),
            (
                f"run page, {args.steps_per_run} steps",
                page(f"/runs/{detail_id}"),
                "its steps by primary key",
                base_steps,
            ),
            ("events page, newest 50", page("/events"), "newest 50 ids", base_page),
            ("waiting page, 200 waiters", page("/waiting"), "newest 50 ids", base_page),
            (
                "functions page, last 1 h",
                page("/functions", window="1h"),
                "newest 50 ids",
                base_page,
            ),
            ("functions page, last 24 h (info)", page("/functions"), "newest 50 ids", base_page),
        ]
        table = Table(
            f"Dashboard pages rendered server-side: {args.runs:,} runs, {written:,} steps "
            f"(PostgreSQL; median of {REPEAT})"
        )
        for what, render, baseline_name, baseline in cases:
            value, base = timed(render), timed(baseline)
            info = "(info)" in what or "OFFSET" in baseline_name
            table.add(
                Row(
                    what,
                    fmt_time(value),
                    f"{fmt_time(base)} {baseline_name}",
                    value / base,
                    "" if "(info)" in what else f"< {TARGET * 1000:.0f} ms",
                    None if "(info)" in what else value < TARGET,
                )
            )
            del info
        table.notes += [
            "celeryflow: Dashboard.handle(Request('GET', path, query)) in this process: the "
            "store views' queries (SQLAlchemy Core, psycopg 3) and the Jinja2 render; no HTTP.",
            "baseline: the bare query a page needs most, on the same engine; for the deep page "
            "the same page by OFFSET instead of the keyset cursor, to show what keyset saves.",
            "functions page: counts by status over the window's runs (an index range of "
            "ix_cf_runs_created), p50/p95 from at most 500 newest ended runs per function.",
            f"fill: {runs_s:.0f} s for runs, events and waiters; {steps_s:.0f} s for steps "
            "(INSERT ... SELECT generate_series, synchronous_commit off, one chunk of "
            f"{CHUNK:,} runs' steps per statement).",
        ]
        print(table.render())
        engine.dispose()


if __name__ == "__main__":
    main()
