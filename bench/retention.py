"""Retention benchmark (issue 14 item 2): the store stays flat under a short retention.

    python bench/retention.py                                  # 20 cycles x 1,000 runs, both stores
    python bench/retention.py --stores sqlite --per-cycle 200  # smaller, one store

Each cycle sends ``--per-cycle`` events (each a run of two steps with a ``cancel_on``
waiter and a rate-limit key of its own; a per-second cron function runs beside them)
to a real in-process Celery worker (threads, -c 4), waits until they ended and the
reconciler's retention pass (retention 1 s, dedup window 1 s, prune interval 0.5 s)
removed the earlier cycles, and measures every ``cf_*`` table's rows and the store's
size: SQLite, the file (pages of deleted rows are reused; it never shrinks without
VACUUM); PostgreSQL, ``pg_total_relation_size`` of the tables after ``VACUUM
(TRUNCATE false)`` (what autovacuum does, here at once, keeping the emptied pages at a
table's end so that the size is a high-water mark, as SQLite's file is). SQLite runs
on the embedded broker, whose file is measured too; PostgreSQL on a private Redis.
The cycle driver is tests/retention_cycles.py, shared with tests/test_retention.py
(20 cycles of 150 runs there, 100 on PostgreSQL).

Target (issue 14): after warm-up, the size stays within 10%.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from celery import Celery

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import fresh_redis_db, fresh_store, machine_info, redis_url  # noqa: E402
from retention_cycles import SETTINGS, TABLES, Sample, define, run_cycles  # noqa: E402

from celeryflow import Flow  # noqa: E402
from celeryflow.testing import worker  # noqa: E402

SHORT = {
    "cf_runs": "runs",
    "cf_steps": "steps",
    "cf_events": "events",
    "cf_waits": "waits",
    "cf_wait_fields": "fields",
    "cf_flow_keys": "keys",
    "cf_cron_ticks": "ticks",
}


@contextlib.contextmanager
def broker_for(kind: str) -> Iterator[tuple[str, str | None]]:
    """(broker URL, embedded broker file or None)."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="cf-bench-") as tmp:
            path = f"{tmp}/broker.db"
            yield f"celeryflow+sqlite:///{path}", path
        return
    with fresh_redis_db() as db:
        yield redis_url(db), None


def line(sample: Sample) -> str:
    rows = " ".join(f"{SHORT[t]}={sample.rows[t]:<5}" for t in TABLES)
    broker = ""
    if sample.broker_bytes is not None:
        broker = f"  broker {sample.broker_bytes / 1024:8.0f} KiB ({sample.broker_messages} msgs)"
    return (
        f"cycle {sample.cycle:2}  {sample.seconds:5.1f} s  {rows}"
        f"  store {sample.store_bytes / 1024:8.0f} KiB{broker}  [{sample.store_detail}]"
    )


def bench(kind: str, cycles: int, per_cycle: int, warm_up: int) -> bool:
    print(f"\n## {kind}: {cycles} cycles x {per_cycle} runs (warm-up {warm_up})")
    with fresh_store(kind) as store, broker_for(kind) as (broker, broker_file):
        app = Celery("bench-retention", broker=broker)
        app.conf.worker_hijack_root_logger = False
        flow = Flow(app, store=store, auto_migrate=True, **SETTINGS)
        define(flow)
        with worker(flow, concurrency=4):
            samples = run_cycles(
                flow,
                cycles=cycles,
                per_cycle=per_cycle,
                broker_path=broker_file,
                timeout=600,
                report=lambda s: print(line(s), flush=True),
            )
        flow.store.engine.dispose()
    base = samples[warm_up - 1]
    after = samples[warm_up:]
    largest = max(s.store_bytes for s in after)
    ok = largest <= base.store_bytes * 1.1
    print(
        f"store after warm-up: {base.store_bytes / 1024:.0f} KiB, largest after: "
        f"{largest / 1024:.0f} KiB ({largest / base.store_bytes - 1:+.1%}): "
        f"{'flat' if ok else 'GROWS'} (target within 10%)"
    )
    if base.broker_bytes:
        biggest = max(s.broker_bytes or 0 for s in after)
        flat = biggest <= base.broker_bytes * 1.1
        ok = ok and flat
        print(
            f"broker file after warm-up: {base.broker_bytes / 1024:.0f} KiB, largest after: "
            f"{biggest / 1024:.0f} KiB: {'flat' if flat else 'GROWS'}"
        )
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--per-cycle", type=int, default=1000)
    parser.add_argument("--warm-up", type=int, default=5)
    args = parser.parse_args()
    print(f"# python bench/retention.py {' '.join(sys.argv[1:])}".rstrip())
    for info in machine_info():
        print(f"# {info}")
    results = [
        bench(kind, args.cycles, args.per_cycle, args.warm_up) for kind in args.stores.split(",")
    ]
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
