"""The line protocol between bench/peers.py and one system's driver process.

Each system runs in its own interpreter (celeryflow, plain Celery and the floors in the
project's venv; DBOS and pyworkflow in bench/peers/.venv), so bench/peers.py talks to a
driver subprocess: the driver sets a workload up, prints ``{"ready": ...}`` (or
``{"unsupported": reason}``), then answers each ``go`` line on stdin with one
measurement ``{"value": ...}`` and exits on ``quit`` or end of input, tearing its
workload down. Standard library only: the peers' venv does not have the project.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["WORKLOADS", "CommitWatch", "Unsupported", "driver_args", "serve"]

WORKLOADS = ("steps", "throughput", "sleepers", "waiters")
STEPS = 100
RUNS = 1000  # throughput: one-step runs
SLOTS = 2  # throughput: worker slots
SLEEPERS = 200
SLEEP_S = 2.0


class CommitWatch:
    """When a run's completion committed, on PostgreSQL: a trigger on the system's own
    runs table, in the bench's own database, sends ``NOTIFY`` as a row turns
    ``completed``; PostgreSQL delivers it at that transaction's commit, and this
    connection (LISTEN, blocked in the driver, no polling) notes the time it arrives.
    A time taken when the waiter's code returns (DBOS's in-process handle) or a
    timestamp written before the commit would leave the commit out; a poll would add
    up to its interval and its own queries' load. Psycopg 3 (both venvs have it)."""

    CHANNEL = "bench_completed"

    def __init__(self, url: str, table: str, id_column: str, status: str = "completed") -> None:
        import psycopg
        from psycopg import sql

        self.conn = psycopg.connect(url, autocommit=True)
        function = sql.Identifier(f"bench_notify_{table}")
        self.conn.execute(
            sql.SQL(
                "CREATE OR REPLACE FUNCTION {f}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "IF NEW.status = {s} AND OLD.status IS DISTINCT FROM NEW.status THEN "
                "PERFORM pg_notify({c}, NEW.{i}::text); END IF; RETURN NEW; END $$"
            ).format(
                f=function,
                s=sql.Literal(status),
                c=sql.Literal(self.CHANNEL),
                i=sql.Identifier(id_column),
            )
        )
        self.conn.execute(
            sql.SQL(
                "CREATE OR REPLACE TRIGGER {t} AFTER UPDATE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION {f}()"
            ).format(
                t=sql.Identifier(f"bench_completed_{table}"),
                table=sql.Identifier(table),
                f=function,
            )
        )
        self.conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.CHANNEL)))

    def completed(self, run_id: str, timeout: float = 120.0) -> float:
        """``time.perf_counter()`` when the commit that completed ``run_id`` arrived."""
        import time

        deadline = time.perf_counter() + timeout
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise TimeoutError(f"run {run_id}: no completion committed in {timeout:.0f} s")
            for notify in self.conn.notifies(timeout=left, stop_after=1):
                if notify.payload == run_id:
                    return time.perf_counter()

    def close(self) -> None:
        self.conn.close()


class Unsupported(Exception):
    """The system cannot run this workload; the message says why."""


def driver_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workload", choices=WORKLOADS, required=True)
    parser.add_argument("--store", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--url", default="", help="libpq URL or SQLite file path")
    parser.add_argument("--broker", default="", help="Redis URL, where the system needs one")
    parser.add_argument("--queue", default="peers")
    parser.add_argument("--waiters", type=int, default=10_000)
    parser.add_argument("--variant", default="", help="a system's own configuration switch")
    return parser.parse_args(argv)


_out: Any = None


def _say(message: dict[str, Any]) -> None:
    _out.write(json.dumps(message) + "\n")
    _out.flush()


def serve(setup: Callable[[argparse.Namespace], contextlib.AbstractContextManager[Any]]) -> int:
    """Run a driver: ``setup(args)`` is a context manager yielding ``(measure, info)``;
    ``measure()`` returns one JSON-able measurement."""
    global _out
    # the protocol keeps the real stdout; whatever the libraries print goes to stderr
    _out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    args = driver_args()
    try:
        with setup(args) as (measure, info):
            _say({"ready": True, "info": info})
            for line in _lines():
                if line == "quit":
                    break
                _say({"value": measure()})
    except Unsupported as exc:
        _say({"unsupported": str(exc)})
        return 0
    except BaseException as exc:
        _say({"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-3000:]})
        return 1
    return 0


def _lines() -> Iterator[str]:
    for raw in sys.stdin:
        line = raw.strip()
        if line:
            yield line
