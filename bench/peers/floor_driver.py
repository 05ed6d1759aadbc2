"""The raw floors of bench/peers.py's step latency (the project's venv): what 100
durable writes cost on this machine before any engine work.

* PostgreSQL: 100 INSERTs of a cf_steps-shaped row through psycopg in autocommit (one
  round trip and one WAL flush each).
* SQLite (``--variant normal``): 100 x (BEGIN IMMEDIATE; INSERT; COMMIT) through
  sqlite3 with the store's pragmas, WAL + synchronous=NORMAL (a commit is durable
  against a crash of the process, not of the machine).
* SQLite (``--variant full``): the same with synchronous=FULL (an fsync per commit),
  as DBOS and pyworkflow commit.

The sleepers' floor (``--variant relay`` or ``--variant timer``, on either store, a
Redis broker): bench/apps.py's ``floor_app``, plain Celery tasks that do only the
durable writes a sleeper needs, through the bare driver (psycopg autocommit; sqlite3
with the store's pragmas): the sender commits the run's row and publishes its start;
the start commits the park; the end commits the end. ``relay``: the wake-up is a
second message, published with ``countdown`` (Celery ETA), as in any engine whose
wake-up rides the broker; ``timer``: the wake-up stays in the pool process's memory
(``threading.Timer``), one message per sleeper, the least possible, and lost with
the process. Worker --pool prefork -c 2, as celeryflow's side.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(BENCH))

import apps  # noqa: E402
import engine  # noqa: E402
import redis  # noqa: E402
from protocol import SLEEP_S, SLEEPERS, STEPS, Unsupported, serve  # noqa: E402

from celeryflow.store.database import create_store_engine  # noqa: E402
from celeryflow.store.tables import steps as steps_table  # noqa: E402


@contextlib.contextmanager
def sleepers(args: Any) -> Iterator[Any]:
    if args.variant not in ("relay", "timer"):
        raise Unsupported(f"the sleepers' floor has variants relay and timer, not {args.variant!r}")
    app = apps.floor_app(args.broker, args.queue, args.url)
    start = app.tasks["floor.start"]
    rows = apps.FloorStore(args.url)
    rows.create()
    r = redis.Redis.from_url(args.broker, socket_timeout=30)
    env = {"CF_BENCH_KIND": "floor", "CF_BENCH_BROKER": args.broker, "CF_BENCH_STORE": args.url}
    relay = args.variant == "relay"
    with engine.celery_worker(env, args.queue, pool="prefork"):

        def measure() -> float:
            r.delete(apps.COUNT_KEY, apps.LAST_AT_KEY)
            started = time.time()
            for _ in range(SLEEPERS):
                run_id = os.urandom(16).hex()
                rows.start(run_id)
                start.delay(run_id, SLEEP_S, relay)
            return apps.wait_counted(r, SLEEPERS, started)

        yield measure, {"store": "sqlite3" if rows.sqlite else "psycopg", "wake": args.variant}
    r.close()


@contextlib.contextmanager
def setup(args: Any) -> Iterator[Any]:
    if args.workload == "sleepers":
        with sleepers(args) as got:
            yield got
        return
    if args.workload != "steps":
        raise Unsupported("a floor is defined for the step latency and the sleepers only")
    cols = [c.name for c in steps_table.c]
    naive = datetime.utcnow()  # the columns hold naive UTC
    if args.store == "postgresql":
        import psycopg

        url = args.url.replace("postgresql://", "postgresql+psycopg://", 1)
        sa_engine = create_store_engine(url)
        engine.scratch_table().metadata.create_all(sa_engine)
        sa_engine.dispose()
        marks = ", ".join(["%s"] * len(cols))
        sql = f"INSERT INTO bench_scratch ({', '.join(cols)}) VALUES ({marks})"
        with psycopg.connect(args.url, autocommit=True) as conn:

            def measure_pg() -> float:
                run_id = f"floor-{os.urandom(8).hex()}"
                started = time.perf_counter()
                for i in range(STEPS):
                    row = engine.step_row(run_id, i, naive)
                    conn.execute(sql, [row[c] for c in cols])
                return time.perf_counter() - started

            yield measure_pg, {"psycopg": psycopg.__version__}
        return
    sync = {"normal": "NORMAL", "full": "FULL"}[args.variant or "normal"]
    sa_engine = create_store_engine(f"sqlite:///{args.url}")
    engine.scratch_table().metadata.create_all(sa_engine)
    sa_engine.dispose()
    sql = f"INSERT INTO bench_scratch ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
    lite = sqlite3.connect(args.url, isolation_level=None, timeout=60)
    for pragma in ("journal_mode=WAL", f"synchronous={sync}"):
        lite.execute(f"PRAGMA {pragma}")

    def measure_lite() -> float:
        run_id = f"floor-{os.urandom(8).hex()}"
        started = time.perf_counter()
        for i in range(STEPS):
            row = engine.step_row(run_id, i, naive)
            lite.execute("BEGIN IMMEDIATE")
            lite.execute(sql, [row[c] for c in cols])
            lite.execute("COMMIT")
        return time.perf_counter() - started

    try:
        yield measure_lite, {"sqlite": sqlite3.sqlite_version, "synchronous": sync}
    finally:
        lite.close()


if __name__ == "__main__":
    raise SystemExit(serve(setup))
