"""Cron without beat: a plain ``celery -A app worker`` (no ``-B``) fires cron slots
from its reconciler thread, and any number of workers fire each slot once."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime, timedelta, timezone
from itertools import pairwise
from pathlib import Path

import pytest
import sqlalchemy as sa
from celery import Celery
from flowkit import apps_env, worker_process
from services import Stack

from celeryflow import Flow, cron, event
from celeryflow.reconciler import CronClock
from celeryflow.runs import Run
from celeryflow.testing import wait_for

FUNCTION = "every-two-seconds"


@contextmanager
def plain_worker(
    store_url: str, cwd: Path, name: str, stack: Stack | None = None
) -> Iterator[Path]:
    """``celery -A cron_worker_app worker`` without -B, its log in ``cwd``; on the
    embedded default, or on ``stack``'s broker."""
    log = cwd / f"{name}.log"
    env = apps_env(CF_STORE=store_url)
    if stack is not None:
        env.update(CF_BROKER=stack.broker_url, CF_QUEUE=stack.queue)
    command = [sys.executable, "-m", "celery", "-A", "cron_worker_app", "worker"]
    command += ["--pool", "threads", "-c", "2", "-n", f"{name}@%h", "--loglevel", "INFO"]
    command += ["--without-mingle", "--without-gossip", "--without-heartbeat"]
    with worker_process(command, env, cwd, log):
        yield log


def reader(store_url: str) -> Flow:
    return Flow(Celery("reader", broker="memory://"), store=store_url)


def slot_of(run: Run) -> datetime:
    return datetime.fromisoformat(run.events[0].data["scheduled_at"])


def completed(flow: Flow, at_least: int) -> list[Run] | None:
    runs = flow.list_runs(function_id=FUNCTION, status="completed", limit=1000)
    return runs if len(runs) >= at_least else None


def test_a_worker_without_beat_fires_cron_slots_on_time(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    flow = reader(url)
    with plain_worker(url, tmp_path, "solo"):
        wait_for(lambda: completed(flow, 4), timeout=60, interval=0.2, what="4 cron runs")
    runs = flow.list_runs(function_id=FUNCTION, limit=1000)
    slots = sorted(slot_of(r) for r in runs)
    assert len(slots) == len(set(slots))
    assert {(b - a).total_seconds() for a, b in pairwise(slots)} == {2.0}, slots
    # the thread wakes at each slot (measured: well under a millisecond late when idle)
    lags = [(r.created_at - slot_of(r)).total_seconds() for r in runs]
    assert min(lags) >= 0 and statistics.median(lags) < 1.0, lags


@pytest.mark.parametrize("stack", ["embedded", "redis-postgres"], indirect=True)
def test_two_workers_fire_each_slot_exactly_once(stack: Stack, tmp_path: Path) -> None:
    # both wake at the same instant at each slot and race for the ledger row
    url = stack.store_url
    flow = reader(url)
    flow.store.migrate()
    broker = None if stack.name == "embedded" else stack  # embedded: the default
    with ExitStack() as workers:
        logs = [
            workers.enter_context(plain_worker(url, tmp_path, n, broker)) for n in ("one", "two")
        ]
        wait_for(
            lambda: all(" ready." in log.read_text() for log in logs), timeout=60, what="ready"
        )
        start = len(completed(flow, 0) or [])
        # both workers are up: four more slots that both look at
        wait_for(lambda: completed(flow, start + 4), timeout=60, interval=0.2, what="4 more runs")
    runs = flow.list_runs(function_id=FUNCTION, limit=1000)
    per_slot = Counter(slot_of(r) for r in runs)
    assert set(per_slot.values()) == {1}, per_slot
    slots = sorted(per_slot)
    assert {(b - a).total_seconds() for a, b in pairwise(slots)} == {2.0}, slots


def test_the_clock_looks_at_each_slot_and_not_in_between(tmp_path: Path) -> None:
    flow = Flow(Celery("c", broker="memory://"), store=f"sqlite:///{tmp_path}/s.db")
    clock = CronClock(flow)

    @flow.function(id="plain", trigger=event("t/plain"))
    def plain(ctx):  # type: ignore[no-untyped-def]
        pass

    assert clock.seconds_left(datetime.now(timezone.utc)) is None  # no cron: no wake-up

    @flow.function(id="nine", trigger=cron("0 9 * * *"))
    def nine(ctx):  # type: ignore[no-untyped-def]
        pass

    t = datetime(2030, 1, 1, 8, 59, 59, 500000, tzinfo=timezone.utc)
    assert clock.seconds_left(t) == 0.0  # a first look at once (a missed slot, if recent)
    assert clock.fire(t) == []  # yesterday's 09:00 is history for a new function
    assert clock.next_at == datetime(2030, 1, 1, 9, 0, tzinfo=timezone.utc)
    assert clock.seconds_left(t) == 0.5
    assert clock.seconds_left(t - timedelta(minutes=5)) == 1.0  # at most tick_interval
    nine_o_clock = datetime(2030, 1, 1, 9, 0, 0, 1000, tzinfo=timezone.utc)
    assert clock.seconds_left(nine_o_clock) == 0.0
    [run_id] = clock.fire(nine_o_clock)
    assert flow.get_run(run_id).events[0].data["scheduled_at"] == "2030-01-01T09:00:00+00:00"
    assert clock.next_at == datetime(2030, 1, 2, 9, 0, tzinfo=timezone.utc)
    # a look between slots skips the slot it handled: no query at all
    statements: list[str] = []
    sa.event.listen(flow.store.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    later = nine_o_clock + timedelta(hours=1)
    assert flow.tick(later, since=nine_o_clock) == [] and statements == []
    assert flow.tick(later) == [] and statements  # without since: the ledger says no


ORDER_SCRIPT = """
import sys
from celery import Celery
from celeryflow import Flow
app = Celery("order")
Flow(app, store=sys.argv[1])
worker = app.WorkController(concurrency=1, pool_cls="prefork", without_mingle=True)
print(" ".join(step.alias for step in worker.blueprint.order))
"""


@pytest.mark.parametrize("seed", ["0", "2", "3", "4", "5"])
def test_the_reconciler_thread_starts_after_the_pool_forks(tmp_path: Path, seed: str) -> None:
    """A prefork child forked while the reconciler thread holds a lock (kombu's
    cached_property, SQLite's) hangs for good at its first use of it. Celery orders
    unrelated bootsteps by hash, so under some seeds (2-5 here) the thread started first."""
    env = {**os.environ, "PYTHONHASHSEED": seed}
    store = f"sqlite:///{tmp_path / 'order.db'}"
    done = subprocess.run(
        [sys.executable, "-c", ORDER_SCRIPT, store],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    order = done.stdout.split()
    assert order.index("ReconcilerStep") > order.index("Pool"), order
