"""Embedded broker benchmark: ``celeryflow+sqlite://`` vs kombu's ``sqla+sqlite://``.

Same machine, same run, one ``celery worker -c 2`` (prefork) per broker, a trivial task
that records its start time. Prints pick-up latency (send -> task start, tasks sent one
at a time) and throughput (N tasks published back to back until the last one has run),
then the ratios. Usage: ``python bench/transport_sqlite.py [N]`` (default 1000).
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APP = """
import os, sqlite3, time
from celery import Celery
import celeryflow.transport.kombu_sqlite  # noqa: F401
app = Celery("bench", broker=os.environ["BENCH_BROKER"])
app.conf.update(task_ignore_result=True, worker_hijack_root_logger=False)
_conn = {}
@app.task(name="bench.record")
def record(key, sent):
    started = time.time()
    conn = _conn.get(os.getpid())
    if conn is None:
        conn = _conn[os.getpid()] = sqlite3.connect(os.environ["BENCH_RESULTS"], timeout=30)
    with conn:
        conn.execute("INSERT INTO runs VALUES (?, ?, ?)", (key, started, sent))
"""


def count(results: Path) -> int:
    with sqlite3.connect(results, timeout=30) as conn:
        return int(conn.execute("SELECT count(*) FROM runs").fetchone()[0])


def wait_count(results: Path, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while count(results) < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out: {count(results)}/{n} tasks ran")
        time.sleep(0.01)


def run(name: str, broker: str, tmp: Path, n: int) -> dict[str, float]:
    results = tmp / f"{name}-results.db"
    with sqlite3.connect(results) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE runs (key TEXT, started REAL, sent REAL)")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp), str(ROOT)]),
        "BENCH_BROKER": broker,
        "BENCH_RESULTS": str(results),
    }
    log = open(tmp / f"{name}.log", "wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "bench_app", "worker", "-c", "2", "-l", "INFO"],
        cwd=tmp,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    os.environ.update(BENCH_BROKER=broker, BENCH_RESULTS=str(results))
    sys.path[:0] = [str(tmp), str(ROOT)]
    import bench_app  # type: ignore[import-not-found]

    app = bench_app.app
    app.conf.broker_url = broker
    try:
        deadline = time.monotonic() + 30
        while b" ready." not in (tmp / f"{name}.log").read_bytes():
            if time.monotonic() > deadline or worker.poll() is not None:
                raise SystemExit((tmp / f"{name}.log").read_text())
            time.sleep(0.05)
        app.send_task("bench.record", ("warmup", time.time()))
        wait_count(results, 1, 30)
        for i in range(30):
            app.send_task("bench.record", (f"lat-{i}", time.time()))
            time.sleep(random.uniform(0.05, 0.2))
        wait_count(results, 31, 30)
        start = time.time()
        for i in range(n):
            app.send_task("bench.record", (f"tp-{i}", time.time()))
        wait_count(results, 31 + n, 300)
        elapsed = time.time() - start
        with sqlite3.connect(results) as conn:
            delays = sorted(
                s - t
                for s, t in conn.execute("SELECT started, sent FROM runs WHERE key LIKE 'lat-%'")
            )
        broker_db = tmp / f"{name}-broker.db"
        table = "cf_broker_message" if name == "celeryflow" else "kombu_message"
        with sqlite3.connect(broker_db, timeout=30) as conn:
            rows_left = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        size = broker_db.stat().st_size  # the WAL beside it is bounded and reset
    finally:
        app.close()
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
        log.close()
        sys.modules.pop("bench_app", None)
        del sys.path[:2]
    return {
        "pickup_median_s": statistics.median(delays),
        "pickup_p90_s": delays[int(len(delays) * 0.9)],
        "tasks_per_s": n / elapsed,
        "broker_db_kb": size / 1024,
        "message_rows_left": rows_left,
    }


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "bench_app.py").write_text(APP)
        ours = run("celeryflow", f"celeryflow+sqlite:///{tmp}/celeryflow-broker.db", tmp, n)
        theirs = run("sqla", f"sqla+sqlite:///{tmp}/sqla-broker.db", tmp, n)
    print(f"{n} tasks, one worker -c 2 (prefork) per broker")
    print(f"{'':18}{'celeryflow+sqlite':>20}{'sqla+sqlite':>14}{'ratio':>8}")
    for key in ours:
        ratio = ours[key] / theirs[key] if theirs[key] else float("nan")
        print(f"{key:18}{ours[key]:>20.3f}{theirs[key]:>14.3f}{ratio:>8.2f}")


if __name__ == "__main__":
    main()
