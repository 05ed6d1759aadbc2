"""Cycles of runs through a real worker under a short retention, measuring the store
and the embedded broker's file after each one. Used by tests/test_retention.py (a
short version) and bench/retention.py (1,000 runs per cycle).

A cycle sends ``per_cycle`` events, each starting a run of ``flat`` (two steps, a
``cancel_on`` waiter, a rate-limit key of its own), waits until they all ended and
the retention pass removed the previous cycle's runs and events, then measures:

* rows of every ``cf_*`` table;
* SQLite: the store file's size (deleted rows' pages are reused, so once warm it
  stops growing; it never shrinks without VACUUM) and the pages in use;
* PostgreSQL: ``pg_total_relation_size`` of the ``cf_*`` tables after a
  ``VACUUM (TRUNCATE false)`` of them: what autovacuum does in production, here at
  once (until a vacuum, a deleted row's space is not reusable, and autovacuum's
  one-minute nap is longer than the test), without giving back the empty pages at a
  table's end, so the size is a high-water mark as SQLite's file is (with truncation
  it follows the rows alive at that instant, up and down by a few pages);
* the embedded broker: its file's size and its undelivered messages.

A per-second cron function runs beside it, so cron ticks are pruned too.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from celeryflow import CancelOn, Event, Flow, RateLimit, cron, event
from celeryflow.testing import wait_for

__all__ = ["SETTINGS", "TABLES", "Sample", "define", "run_cycles"]

TABLES = (
    "cf_runs",
    "cf_steps",
    "cf_events",
    "cf_waits",
    "cf_wait_fields",
    "cf_flow_keys",
    "cf_cron_ticks",
)
SETTINGS: dict[str, Any] = {
    "retention": "1s",
    "dedup_window": "1s",
    "prune_interval": "0.5s",
    "reconcile_interval": "0.25s",
    "redeliver_after": "30s",  # the default: no second doorbell for a run that waits its turn
}
SEND_CHUNK = 100


@dataclass
class Sample:
    cycle: int
    seconds: float  # the cycle's duration, from the first send to the measurement
    rows: dict[str, int]
    store_bytes: int
    store_detail: str
    broker_bytes: int | None = None
    broker_messages: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def define(flow: Flow) -> None:
    """The functions the cycles run."""

    @flow.function(
        id="flat",
        trigger=event("flat/go"),
        cancel_on=CancelOn(event="flat/stop", match="data.n"),
        rate_limit=RateLimit(limit=100_000, period="1s", key="event.data.n"),
    )
    def flat(ctx):  # type: ignore[no-untyped-def]
        n = ctx.step.run("one", lambda: len(ctx.event.data["n"]))
        return ctx.step.run("two", lambda: n + 1)

    @flow.function(id="every-second", trigger=cron("* * * * * *"))
    def every_second(ctx):  # type: ignore[no-untyped-def]
        return ctx.step.run("tick", lambda: 1)


def _count(conn: sa.Connection, sql: str) -> int:
    return int(conn.execute(sa.text(sql)).scalar() or 0)


def _rows(flow: Flow) -> dict[str, int]:
    with flow.store.engine.connect() as conn:
        return {table: _count(conn, f"SELECT count(*) FROM {table}") for table in TABLES}


def _store_size(flow: Flow) -> tuple[int, str]:
    engine = flow.store.engine
    if engine.dialect.name == "sqlite":
        path = engine.url.database or ""
        with engine.connect() as conn:
            pages = _count(conn, "PRAGMA page_count")
            free = _count(conn, "PRAGMA freelist_count")
            page_size = _count(conn, "PRAGMA page_size")
        wal = os.path.getsize(path + "-wal") if os.path.exists(path + "-wal") else 0
        # The pages in use, as PostgreSQL's figure is its tables after VACUUM: SQLite's
        # file never shrinks and keeps the high-water mark of the live rows (a cycle the
        # pruner fell behind on a loaded machine) as free pages it reuses.
        detail = f"pages {pages - free}/{pages} in use, file {os.path.getsize(path)} B, wal {wal} B"
        return (pages - free) * page_size, detail
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            for table in TABLES:
                conn.execute(sa.text(f"VACUUM (TRUNCATE false) {table}"))
            total = sum(
                _count(conn, f"SELECT pg_total_relation_size('{table}')") for table in TABLES
            )
        return total, "pg_total_relation_size after VACUUM (TRUNCATE false)"
    raise ValueError(f"no size measurement for {engine.dialect.name}")


def _broker(path: str | None) -> tuple[int | None, int | None]:
    if path is None:
        return None, None
    with sqlite3.connect(path, timeout=30) as conn:
        messages = conn.execute("SELECT count(*) FROM cf_broker_message").fetchone()[0]
    return os.path.getsize(path), int(messages)


def _settled(flow: Flow, per_cycle: int) -> bool:
    """This cycle's runs ended, and the earlier cycles' runs and events are gone."""
    with flow.store.engine.connect() as conn:
        live = _count(
            conn,
            "SELECT count(*) FROM cf_runs WHERE function_id = 'flat'"
            " AND status IN ('queued', 'running', 'sleeping', 'waiting')",
        )
        kept = _count(conn, "SELECT count(*) FROM cf_runs WHERE function_id = 'flat'")
        events = _count(conn, "SELECT count(*) FROM cf_events")
    return live == 0 and kept <= per_cycle and events <= per_cycle


def run_cycles(
    flow: Flow,
    *,
    cycles: int,
    per_cycle: int,
    broker_path: str | None = None,
    timeout: float = 120.0,
    report: Any = None,
) -> list[Sample]:
    """Run the cycles (a worker must be running ``flow``); one sample per cycle."""
    samples: list[Sample] = []
    for cycle in range(cycles):
        started = time.monotonic()
        batch = [Event(name="flat/go", data={"n": f"{cycle}-{i}"}) for i in range(per_cycle)]
        for at in range(0, per_cycle, SEND_CHUNK):
            flow.send(batch[at : at + SEND_CHUNK])
        wait_for(
            lambda: _settled(flow, per_cycle),
            timeout=timeout,
            interval=0.1,
            what=f"cycle {cycle}: its runs ended and the earlier cycles pruned",
        )
        size, detail = _store_size(flow)
        broker_bytes, messages = _broker(broker_path)
        sample = Sample(
            cycle=cycle,
            seconds=time.monotonic() - started,
            rows=_rows(flow),
            store_bytes=size,
            store_detail=detail,
            broker_bytes=broker_bytes,
            broker_messages=messages,
        )
        samples.append(sample)
        if report is not None:
            report(sample)
    return samples
