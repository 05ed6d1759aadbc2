"""Shared helpers for the benchmarks: fresh databases, a private Redis, tables.

PostgreSQL is the one the test-suite uses (tests/services.py): each benchmark creates
its own ``cf_bench_<hex>`` database and drops only that. Redis is a private
``redis-server`` this process starts on first use (tests/redis_server.py: a free port, a
temporary directory, no persistence) and stops at exit, so flushing its dbs touches
nobody's data. Environment variables:

* ``CF_BENCH_PG``        -- libpq-style base, default ``postgresql://postgres@127.0.0.1:5432``
* ``CF_BENCH_REDIS_URL`` -- ``redis://host:port/n``: use that db of a server you choose
  instead of a private one; nothing is flushed there (the benchmarks' queues and keys
  have their own names)
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import sqlalchemy as sa

# The private Redis server and fresh databases are the test-suite's helpers, not copies.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from databases import fresh_postgres_database
from redis_server import DbLender, RedisServer

from celeryflow.runs import RunStatus
from celeryflow.store.database import create_store_engine
from celeryflow.store.tables import runs as runs_table

PG_BASE = os.environ.get("CF_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("CF_BENCH_REDIS_URL")

# --------------------------------------------------------------------------------------
# Fresh resources
# --------------------------------------------------------------------------------------


def _pg_admin() -> Any:
    import psycopg

    return psycopg.connect(f"{PG_BASE}/postgres", autocommit=True, connect_timeout=5)


@contextlib.contextmanager
def fresh_postgres() -> Iterator[tuple[str, str]]:
    """A new PostgreSQL database ``cf_bench_<hex>``, dropped after.

    Yields ``(sqlalchemy_url, libpq_url)``."""
    with fresh_postgres_database(f"{PG_BASE}/postgres", "cf_bench") as name:
        base = PG_BASE.replace("postgresql://", "postgresql+psycopg://", 1)
        yield f"{base}/{name}", f"{PG_BASE}/{name}"


@contextlib.contextmanager
def fresh_sqlite() -> Iterator[tuple[str, str]]:
    """A SQLite file in a new temporary directory. Yields ``(sqlalchemy_url, path)``."""
    tmp = tempfile.mkdtemp(prefix="cf-bench-")
    try:
        path = os.path.join(tmp, "store.db")
        yield f"sqlite:///{path}", path
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def fresh_store(kind: str) -> Iterator[str]:
    """A fresh store URL for ``kind`` in ("postgresql", "sqlite")."""
    maker = fresh_postgres if kind == "postgresql" else fresh_sqlite
    with maker() as (url, _raw):
        yield url


_private_redis: RedisServer | None = None
# db 0 is the base URL's; the benchmarks borrow the others (the tests' protocol)
_redis_dbs = DbLender(lambda db: redis_url(db), first=1)


def redis_owned() -> bool:
    """True when Redis is this process's private server (its dbs are ours to flush)."""
    return not REDIS_URL


def _redis_base() -> str:
    global _private_redis
    if REDIS_URL:
        return REDIS_URL
    if _private_redis is None:
        _private_redis = RedisServer.start()  # stopped at exit
    return _private_redis.url(0)


@contextlib.contextmanager
def fresh_redis_db() -> Iterator[int]:
    """A Redis db for one benchmark: a db of the private server, FLUSHDB-ed before and
    after; or ``$CF_BENCH_REDIS_URL``'s db as it is."""
    if not redis_owned():
        yield int(urlsplit(_redis_base()).path.strip("/") or 0)
        return
    _redis_base()
    with _redis_dbs.lend() as db:
        yield db


def reset_redis_db(db: int, *keys: str) -> None:
    """Empty ``db`` between cases when it is ours; on a server of the user's choice
    delete only ``keys`` (the benchmark's own)."""
    client = redis_client(db)
    try:
        if redis_owned():
            client.flushdb()
        elif keys:
            client.delete(*keys)
    finally:
        client.close()


def redis_url(db: int) -> str:
    return urlunsplit(urlsplit(_redis_base())._replace(path=f"/{db}"))


def redis_client(db: int) -> Any:
    import redis

    return redis.Redis.from_url(redis_url(db), socket_timeout=30)


# --------------------------------------------------------------------------------------
# The worker subprocess
# --------------------------------------------------------------------------------------

HERE = Path(__file__).resolve().parent


@contextlib.contextmanager
def celery_worker(
    env: dict[str, str],
    queue: str,
    pool: str = "prefork",
    module: str = "apps",
    concurrency: int = 2,
    name: str | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m celery -A <module> worker -c <concurrency> --pool <pool>`` on
    ``queue`` (the module is looked up in bench/), with ``env`` added to its
    environment; ``name``: its node name (``-n``), for several on one queue. Every
    benchmark's worker subprocess is this one. Its output is printed if the block fails."""
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        module,
        "worker",
        "-c",
        str(concurrency),
        "--pool",
        pool,
        "-Q",
        queue,
        "--loglevel",
        "WARNING",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    if name is not None:
        cmd += ["-n", f"{name}-{queue}@%h"]
    full_env = {**os.environ, **env, "CF_BENCH_QUEUE": queue}
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p
    )
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        cmd, cwd=HERE, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        yield proc
    except BaseException:
        log.seek(0)
        tail = log.read().decode(errors="replace")[-4000:]
        print(f"--- worker {name or ''} output (last 4000 chars) ---\n{tail}", file=sys.stderr)
        raise
    finally:
        log.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the worker's own group: it and its children
            proc.wait(timeout=10)


# --------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------


class RunCounter:
    """Completed runs of one round, and the latest ended_at, read from the store.

    A poll counts only the runs created since the round began, through the
    (status, created_at) index, and the latest ended_at is read once, when all have
    completed: a poll that scanned every completed run of every round would take CPU
    from the system it measures (the plain side's poll is one Redis GET).
    """

    def __init__(self, url: str) -> None:
        self.engine = create_store_engine(url)
        since = sa.bindparam("since", type_=runs_table.c.created_at.type)
        done = sa.and_(
            runs_table.c.status == RunStatus.COMPLETED.value, runs_table.c.created_at >= since
        )
        self.count = sa.select(sa.func.count()).where(done)
        self.last = sa.select(sa.func.max(runs_table.c.ended_at)).where(done)

    def wait_for(self, total: int, since: float, timeout: float) -> float:
        """Wait until ``total`` runs created since ``since`` (a time.time()) have
        completed; returns the last one's ended_at."""
        params = {"since": datetime.fromtimestamp(since, timezone.utc)}

        def probe() -> bool:
            with self.engine.connect() as conn:
                return int(conn.execute(self.count, params).scalar_one()) >= total

        wait_until(probe, timeout, 0.02, f"{total} completed runs")
        with self.engine.connect() as conn:
            last: datetime = conn.execute(self.last, params).scalar_one()
        return last.timestamp()


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def rounds(
    runs: int, measures: dict[str, Callable[[], Any]], *, warm_up: bool = True
) -> dict[str, list[Any]]:
    """``runs`` rounds (after one warm-up round unless the measures warm up
    themselves), each calling every measure once in an order rotated per round, so a
    machine whose speed drifts during the part does not favour one side: ratios are
    then taken within each round."""
    names = list(measures)
    results: dict[str, list[Any]] = {name: [] for name in names}
    first = 0 if warm_up else 1
    for n in range(first, runs + 1):
        shift = n % len(names)
        for name in names[shift:] + names[:shift]:
            value = measures[name]()
            if n:  # round 0 warms up: connections, statement caches, imports
                results[name].append(value)
    return results


def paired(ours: list[float], theirs: list[float]) -> float:
    """The median over rounds of ours / theirs within each round."""
    return median([a / b for a, b in zip(ours, theirs, strict=True)])


def wait_until(probe: Callable[[], Any], timeout: float, interval: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def fmt_rate(per_second: float) -> str:
    return f"{per_second:,.0f}/s"


# --------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------


@dataclass
class Row:
    """One compared figure: celeryflow's value against a baseline."""

    what: str
    value: str
    baseline: str
    ratio: float | None = None
    target: str = ""
    passed: bool | None = None

    def cells(self) -> list[str]:
        ratio = "" if self.ratio is None else f"{self.ratio:.2f}x"
        result = "" if self.passed is None else ("PASS" if self.passed else "MISS")
        return [self.what, self.value, self.baseline, ratio, self.target, result]


@dataclass
class Table:
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    HEADER = ("measure", "celeryflow", "baseline", "ratio", "target", "result")

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def render(self) -> str:
        cells = [list(self.HEADER), *(r.cells() for r in self.rows)]
        widths = [max(len(c[i]) for c in cells) for i in range(len(self.HEADER))]
        lines = [self.title, "=" * len(self.title)]
        for n, row in enumerate(cells):
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
            if n == 0:
                lines.append("  ".join("-" * w for w in widths))
        lines.extend(f"  * {note}" for note in self.notes)
        return "\n".join(lines)


# --------------------------------------------------------------------------------------
# The machine
# --------------------------------------------------------------------------------------


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


def machine_info() -> list[str]:
    lines = [
        f"host: {platform.platform()}, nproc={os.cpu_count()}, load average "
        + " ".join(f"{x:.2f}" for x in os.getloadavg()),
        f"python: {sys.version.split()[0]} ({sys.executable})",
        "packages: "
        + ", ".join(
            f"{d}={_version(d)}"
            for d in ("celeryflow-engine", "celery", "kombu", "sqlalchemy", "psycopg", "redis")
        ),
    ]
    try:
        with _pg_admin() as admin:
            row = admin.execute("SHOW server_version").fetchone()
            sync = admin.execute("SHOW synchronous_commit").fetchone()
            fsync = admin.execute("SHOW fsync").fetchone()
        lines.append(
            f"postgresql: {row[0] if row else '?'} (synchronous_commit={sync[0] if sync else '?'}"
            f", fsync={fsync[0] if fsync else '?'})"
        )
    except Exception as exc:
        lines.append(f"postgresql: unreachable ({exc})")
    try:
        info = redis_client(0).info("server")
        where = "private" if redis_owned() else "CF_BENCH_REDIS_URL"
        lines.append(f"redis server: {info.get('redis_version')} ({where})")
    except Exception as exc:
        lines.append(f"redis server: unreachable ({exc})")
    import sqlite3

    lines.append(f"sqlite: {sqlite3.sqlite_version}")
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", ":/celeryflow"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
            check=False,
        ).stdout.strip()
        lines.append(f"git: {rev}{' (+ uncommitted changes in celeryflow/)' if dirty else ''}")
    except OSError:
        pass
    return lines
