"""Retention (issue 14 item 2): the reconciler prunes ended runs, old events, expired
flow-control keys and old cron ticks in short batches, one process at a time; live
runs are never touched; the store and the embedded broker's file stay flat."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from celery import Celery
from flowkit import make_flow
from retention_cycles import SETTINGS, TABLES, Sample, define, run_cycles
from services import Stack

from celeryflow import (
    CancelOn,
    Concurrency,
    Debounce,
    Event,
    Flow,
    RateLimit,
    RunNotFound,
    RunStatus,
    Singleton,
    Throttle,
    cron,
    event,
)
from celeryflow.durations import utcnow
from celeryflow.errors import ConfigError
from celeryflow.reconciler import Reconciler
from celeryflow.store.prune import LEASE, prune, release_lease, renew_lease, take_lease
from celeryflow.store.tables import cron_ticks, steps, waits
from celeryflow.testing import wait_for, worker

S = RunStatus
PRUNE_FAST = {"retention": "1s", "prune_interval": "0.2s", "reconcile_interval": "0.3s"}


def _flow(store: str, tmp_path: Path, **settings: Any) -> Flow:
    """A Flow that sends no message anywhere shared (its broker is a file here)."""
    app = Celery("retention", broker=f"celeryflow+sqlite:///{tmp_path / 'broker.db'}")
    return Flow(app, store=store, auto_migrate=True, **settings)


def _count(flow: Flow, sql: str, **params: Any) -> int:
    with flow.store.engine.connect() as conn:
        return int(conn.execute(sa.text(sql), params).scalar() or 0)


def _gone(flow: Flow, run_id: str) -> bool:
    try:
        flow.get_run(run_id)
    except RunNotFound:
        return True
    return False


def _status(flow: Flow, run_id: str) -> S | None:
    try:
        return flow.get_run(run_id).status
    except RunNotFound:
        return None


def test_retention_is_a_setting_with_a_default() -> None:
    flow = Flow(Celery("r"), store="sqlite:///:memory:")
    assert flow.settings.retention == timedelta(days=7)
    assert flow.settings.prune_interval == timedelta(minutes=1)
    assert flow.settings.dedup_window == timedelta(hours=24)
    assert Flow(Celery("r"), store="sqlite:///:memory:", retention=None).settings.retention is None
    kept = Flow(Celery("r"), store="sqlite:///:memory:", retention="30 days")
    assert kept.settings.retention == timedelta(days=30)
    with pytest.raises(ConfigError, match="retention"):
        Flow(Celery("r"), store="sqlite:///:memory:", retention="soon")


def test_live_runs_are_never_touched_and_ended_ones_go(stack: Stack) -> None:
    """Queued, running, sleeping and waiting runs keep their rows and steps while the
    reconciler prunes around them; a finished child stays while its parent lives;
    ended runs go with their steps and waiter rows; then the live ones carry on."""
    flow = make_flow(stack, **PRUNE_FAST)
    release = threading.Event()

    @flow.function(id="done", trigger=event("r/done"))
    def done(ctx):  # type: ignore[no-untyped-def]
        return ctx.step.run("a", lambda: 1)

    @flow.function(id="sleeper", trigger=event("r/sleep"))
    def sleeper(ctx):  # type: ignore[no-untyped-def]
        ctx.step.run("a", lambda: 1)
        ctx.step.sleep("nap", "1h")

    @flow.function(id="waiter", trigger=event("r/wait"))
    def waiter(ctx):  # type: ignore[no-untyped-def]
        ctx.step.run("a", lambda: 1)
        got = ctx.step.wait_for_event("w", event="r/go", match="data.k", timeout="1h")
        return got.data["v"] if got else None

    @flow.function(id="blocker", trigger=event("r/block"))
    def blocker(ctx):  # type: ignore[no-untyped-def]
        ctx.step.run("a", lambda: 1)
        return ctx.step.run("held", lambda: release.wait(60))

    @flow.function(id="later", trigger=event("r/later"))
    def later(ctx):  # type: ignore[no-untyped-def]
        return 1

    @flow.function(id="kid", trigger=event("r/kid"))
    def kid(ctx):  # type: ignore[no-untyped-def]
        return ctx.step.run("a", lambda: "from kid")

    @flow.function(id="parent", trigger=event("r/parent"))
    def parent(ctx):  # type: ignore[no-untyped-def]
        got = ctx.step.invoke("call", function=kid, data={})
        ctx.step.sleep("nap", "1h")
        return got

    @flow.function(
        id="cancelled",
        trigger=event("r/cancel"),
        cancel_on=CancelOn(event="r/stop", match="data.k"),
    )
    def cancelled(ctx):  # type: ignore[no-untyped-def]
        ctx.step.sleep("nap", "1h")

    with worker(flow, concurrency=4):
        [done_ev] = flow.send(Event(name="r/done", data={}))
        flow.send([Event(name=f"r/{n}", data={"k": 1}) for n in ("sleep", "wait", "block")])
        flow.send([Event(name="r/parent", data={}), Event(name="r/cancel", data={"k": 1})])
        queued = later.apply_async(countdown=3600).id
        runs = {r.function_id: r.id for r in flow.list_runs(limit=100)}
        wait_for(lambda: _status(flow, runs["sleeper"]) == S.SLEEPING, what="sleeping")
        wait_for(lambda: _status(flow, runs["waiter"]) == S.WAITING, what="waiting")
        wait_for(lambda: _status(flow, runs["parent"]) == S.SLEEPING, what="parent sleeping")
        wait_for(lambda: _status(flow, runs["cancelled"]) == S.SLEEPING, what="to cancel")
        wait_for(lambda: _status(flow, runs["blocker"]) == S.RUNNING, what="running")
        flow.cancel(runs["cancelled"])  # its cancel_on waiter row stays behind
        kid_id = next(r.id for r in flow.list_runs(function_id="kid"))
        live = [runs[f] for f in ("sleeper", "waiter", "blocker", "parent")] + [queued, kid_id]
        before = {run_id: flow.get_run(run_id) for run_id in live}

        wait_for(lambda: _gone(flow, runs["done"]), timeout=60, what="completed run pruned")
        wait_for(lambda: _gone(flow, runs["cancelled"]), timeout=60, what="cancelled run pruned")
        for run_id in (runs["done"], runs["cancelled"]):
            assert not _count(flow, "SELECT count(*) FROM cf_steps WHERE run_id = :r", r=run_id)
            assert not _count(flow, "SELECT count(*) FROM cf_waits WHERE run_id = :r", r=run_id)
        # events stay for the dedup window (24 h): re-sending starts nothing
        assert _count(flow, "SELECT count(*) FROM cf_events WHERE id = :e", e=done_ev) == 1
        flow.send(Event(name="r/done", data={}, id=done_ev))
        assert not flow.list_runs(function_id="done")

        # untouched: same state, same steps (the ended kid too: its parent lives)
        assert {run_id: flow.get_run(run_id) for run_id in live} == before
        statuses = [before[run_id].status for run_id in live]
        assert statuses == [S.SLEEPING, S.WAITING, S.RUNNING, S.SLEEPING, S.QUEUED, S.COMPLETED]
        assert [len(before[run_id].steps) for run_id in (runs["sleeper"], kid_id)] == [2, 1]
        assert _count(flow, "SELECT count(*) FROM cf_waits WHERE run_id = :r", r=runs["waiter"])

        # the live ones carry on as if nothing happened
        flow.send(Event(name="r/go", data={"k": 1, "v": "resumed"}))
        release.set()
        wait_for(lambda: _status(flow, runs["waiter"]) in (S.COMPLETED, None), timeout=60)
        wait_for(lambda: _status(flow, runs["blocker"]) in (S.COMPLETED, None), timeout=60)
        # ended now, they go in turn
        wait_for(lambda: _gone(flow, runs["waiter"]), timeout=60, what="waiter pruned")
        wait_for(lambda: _gone(flow, runs["blocker"]), timeout=60, what="blocker pruned")
        assert flow.get_run(runs["sleeper"]).status == S.SLEEPING
        assert flow.get_run(kid_id).status == S.COMPLETED


def _insert_run(flow: Flow, run_id: str, status: S, ended: datetime, **extra: Any) -> None:
    row = {
        "id": run_id,
        "function_id": "f",
        "event_id": None,
        "events": "[]",
        "status": status.value,
        "attempt": 0,
        "fence": 1,
        "dispatches": 0,
        "created_at": ended - timedelta(seconds=1),
        "ended_at": ended if status in (S.COMPLETED, S.FAILED, S.CANCELLED, S.SKIPPED) else None,
        **extra,
    }
    flow.store.insert_runs([row])


def test_prune_in_small_batches_and_parents_keep_their_branches(
    store_url: str, tmp_path: Path
) -> None:
    """On each database: more ended runs than a batch all go, with their steps; an
    ended parent with a live branch stays, and so does an ended child of a live one."""
    flow = _flow(store_url, tmp_path)
    old = utcnow() - timedelta(days=2)
    for i in range(23):
        _insert_run(flow, f"old-{i:02}", S.COMPLETED, old)
    step = {"key": "a", "name": "a", "position": 0, "kind": "run", "status": "completed"}
    waiter = {"kind": "cancel", "event_name": "r/x", "created_at": old}
    with flow.store.engine.begin() as conn:
        conn.execute(steps.insert(), [{**step, "run_id": f"old-{i:02}"} for i in range(23)])
        # a waiter left by a run cancelled just now, and one of a live run
        conn.execute(waits.insert(), [{**waiter, "run_id": r, "key": "c"} for r in ("now", "live")])
    _insert_run(flow, "ended-parent", S.CANCELLED, old)
    _insert_run(flow, "live-branch", S.RUNNING, old, parent_run_id="ended-parent", branch=0)
    _insert_run(flow, "live-parent", S.WAITING, old)
    _insert_run(flow, "ended-child", S.COMPLETED, old, parent_run_id="live-parent")
    _insert_run(flow, "recent", S.FAILED, utcnow())
    _insert_run(flow, "now", S.CANCELLED, utcnow())
    _insert_run(flow, "live", S.SLEEPING, old)
    seen: list[tuple[str, int]] = []

    dry = prune(
        flow.store,
        now=utcnow(),
        older_than=timedelta(days=1),
        dedup_window=timedelta(hours=24),
        dry_run=True,
    )
    assert (dry.runs, dry.steps) == (23, 23)
    assert _count(flow, "SELECT count(*) FROM cf_runs") == 30  # a dry run deletes nothing
    asked = iter([True, True, False])  # a time budget of two batches
    cut = prune(
        flow.store,
        now=utcnow(),
        older_than=timedelta(days=1),
        dedup_window=timedelta(hours=24),
        batch=5,
        keep_going=lambda: next(asked),
    )
    assert (cut.runs, cut.complete) == (10, False)
    pruned = prune(
        flow.store,
        now=utcnow(),
        older_than=timedelta(days=1),
        dedup_window=timedelta(hours=24),
        batch=5,
        progress=lambda kind, n: seen.append((kind, n)),
    )
    assert (pruned.runs, pruned.steps, pruned.waits, pruned.complete) == (13, 13, 1, True)
    assert max(n for kind, n in seen if kind == "runs") == 5  # batches of at most 5
    left = {r.id for r in flow.list_runs(limit=100)}
    kept = {"ended-parent", "live-branch", "live-parent", "ended-child", "recent", "now", "live"}
    assert left == kept
    assert _count(flow, "SELECT count(*) FROM cf_waits WHERE run_id = 'live'") == 1
    assert _count(flow, "SELECT count(*) FROM cf_waits") == 1


def test_events_keep_their_dedup_window(store_url: str, tmp_path: Path) -> None:
    flow = _flow(store_url, tmp_path)
    [old] = flow.send(Event(name="r/nobody", data={}))
    now = utcnow()
    kwargs: dict[str, Any] = {
        "older_than": timedelta(seconds=1),
        "dedup_window": timedelta(hours=24),
    }
    assert prune(flow.store, now=now + timedelta(hours=2), **kwargs).events == 0
    assert prune(flow.store, now=now + timedelta(hours=25), **kwargs).events == 1
    assert _count(flow, "SELECT count(*) FROM cf_events WHERE id = :e", e=old) == 0
    # a longer retention keeps them longer than the window
    flow.send(Event(name="r/nobody", data={}))
    kwargs["older_than"] = timedelta(days=3)
    assert prune(flow.store, now=now + timedelta(hours=25), **kwargs).events == 0


def test_dedup_window_is_a_setting(sqlite_store_url: str, tmp_path: Path) -> None:
    flow = _flow(sqlite_store_url, tmp_path, dedup_window="5s")

    @flow.function(id="once", trigger=event("r/once"))
    def once(ctx):  # type: ignore[no-untyped-def]
        return 1

    flow.send(Event(name="r/once", data={}, id="same"))
    flow.send(Event(name="r/once", data={}, id="same"))
    assert len(flow.list_runs(function_id="once")) == 1  # inside the window

    def resent() -> bool:
        flow.send(Event(name="r/once", data={}, id="same"))
        return len(flow.list_runs(function_id="once")) == 2

    wait_for(resent, timeout=30, interval=0.2, what="the id counts as new after 5 s")


def test_expired_flow_control_keys_go_and_live_ones_stay(store_url: str, tmp_path: Path) -> None:
    flow = _flow(store_url, tmp_path)

    @flow.function(
        id="controlled",
        trigger=event("r/fc"),
        rate_limit=RateLimit(limit=10, period="1m", key="event.data.k"),
        throttle=Throttle(limit=10, period="1m", key="event.data.k"),
        idempotency="event.data.k",
        singleton=Singleton(key="event.data.k"),
    )
    def controlled(ctx):  # type: ignore[no-untyped-def]
        return 1

    @flow.function(id="debounced", trigger=event("r/fc"), debounce=Debounce(period="1h"))
    def debounced(ctx):  # type: ignore[no-untyped-def]
        return 1

    flow.send([Event(name="r/fc", data={"k": k}) for k in ("a", "b")])
    scopes = "SELECT count(*) FROM cf_flow_keys WHERE scope = :s"
    assert _count(flow, scopes, s="rate_limit") == 2
    kwargs: dict[str, Any] = {"older_than": timedelta(days=7), "dedup_window": timedelta(days=7)}
    # 2 h later: rate limit and throttle times passed; idempotency (24 h) has not; the
    # singleton and debounce runs are still queued (live)
    later = prune(flow.store, now=utcnow() + timedelta(hours=2), **kwargs)
    assert later.flow_keys == 4
    assert _count(flow, scopes, s="idempotency") == 2
    assert _count(flow, scopes, s="singleton") == 2
    assert _count(flow, scopes, s="debounce") == 1
    for run in flow.list_runs(limit=100):
        flow.cancel(run.id)
    after = prune(flow.store, now=utcnow() + timedelta(hours=25), **kwargs)
    assert after.flow_keys == 5  # idempotency past 24 h, singleton and debounce runs ended
    assert _count(flow, "SELECT count(*) FROM cf_flow_keys") == 0


@pytest.mark.parametrize("stack", ["embedded", "redis-postgres"], indirect=True)
def test_concurrency_keys_go_once_no_run_uses_them(stack: Stack) -> None:
    flow = make_flow(stack, retention=None)  # the test prunes, not the worker

    @flow.function(
        id="limited", trigger=event("r/lim"), concurrency=Concurrency(limit=1, key="event.data.k")
    )
    def limited(ctx):  # type: ignore[no-untyped-def]
        return ctx.step.run("a", lambda: 1)

    with worker(flow):
        flow.send([Event(name="r/lim", data={"k": k}) for k in ("a", "b", "c")])
        wait_for(lambda: len(flow.list_runs(status=S.COMPLETED)) == 3, timeout=60)
    assert _count(flow, "SELECT count(*) FROM cf_flow_keys WHERE scope = 'concurrency1'") == 3
    kwargs: dict[str, Any] = {"older_than": timedelta(days=7), "dedup_window": timedelta(days=7)}
    assert prune(flow.store, now=utcnow(), **kwargs).flow_keys == 3


def test_cron_ticks_keep_what_a_trigger_could_still_fire(
    sqlite_store_url: str, tmp_path: Path
) -> None:
    flow = _flow(sqlite_store_url, tmp_path)

    @flow.function(id="both", trigger=[cron("* * * * *"), cron("0 0 1 * *")])
    def both(ctx):  # type: ignore[no-untyped-def]
        return 1

    start = datetime(2026, 11, 1, 0, 0, tzinfo=timezone.utc)
    for minute in range(0, 600, 7):  # the monthly slot, then minute slots
        flow.tick(start + timedelta(minutes=minute, seconds=1))
    fired = _count(flow, "SELECT count(*) FROM cf_cron_ticks")
    assert fired > 50
    now = start + timedelta(minutes=600)
    floors = Reconciler(flow).cron_floors(now)
    assert floors == {"both": start}  # the monthly trigger could still fire Nov 1st
    kwargs: dict[str, Any] = {"older_than": timedelta(minutes=1), "dedup_window": timedelta(1)}
    assert prune(flow.store, now=now, cron_floors=floors, **kwargs).cron_ticks == 0
    # a month on, only the minute trigger's newest tick matters... and the newest stays
    month = datetime(2026, 12, 1, 0, 0, tzinfo=timezone.utc)
    floors = Reconciler(flow).cron_floors(month + timedelta(minutes=5))
    pruned = prune(flow.store, now=month + timedelta(minutes=5), cron_floors=floors, **kwargs)
    assert pruned.cron_ticks == fired - 1
    with flow.store.engine.connect() as conn:
        kept = list(conn.execute(sa.select(cron_ticks.c.scheduled_at)).scalars())
    assert kept == [start + timedelta(minutes=595)]  # the newest stays
    # functions not named keep their ticks
    assert prune(flow.store, now=month + timedelta(days=9), **kwargs).cron_ticks == 0


def test_one_pruner_at_a_time(sqlite_store_url: str, tmp_path: Path) -> None:
    flow = _flow(sqlite_store_url, tmp_path)
    store, now, hold = flow.store, utcnow(), timedelta(minutes=1)
    assert take_lease(store, "a", now, hold)
    assert not take_lease(store, "b", now, hold)
    assert not take_lease(store, "a", now + timedelta(seconds=30), hold)  # the interval holds
    assert not renew_lease(store, "b", now, hold)
    assert renew_lease(store, "a", now + timedelta(seconds=50), hold)
    assert not take_lease(store, "b", now + timedelta(seconds=70), hold)  # renewed
    assert take_lease(store, "b", now + timedelta(seconds=111), hold)  # lapsed
    release_lease(store, "b", now + timedelta(seconds=112))
    assert take_lease(store, "a", now + timedelta(seconds=112), hold)
    # pruning never removes the lease row itself
    kwargs: dict[str, Any] = {"older_than": timedelta(0), "dedup_window": timedelta(0)}
    prune(store, now=now + timedelta(days=30), **kwargs)
    where = " AND ".join(f"{k} = '{v}'" for k, v in LEASE.items())
    assert _count(flow, f"SELECT count(*) FROM cf_flow_keys WHERE {where}") == 1
    # a reconciler finds the lease ("a" holds it) and prunes nothing
    flow = _flow(sqlite_store_url, tmp_path, retention="1s")
    assert Reconciler(flow).prune() is None


def test_retention_none_keeps_everything(sqlite_store_url: str, tmp_path: Path) -> None:
    flow = _flow(sqlite_store_url, tmp_path, retention=None)
    _insert_run(flow, "ancient", S.COMPLETED, utcnow() - timedelta(days=400))
    assert Reconciler(flow).prune() is None
    assert not _gone(flow, "ancient")
    pruning = _flow(sqlite_store_url, tmp_path, retention="30 days")
    done = Reconciler(pruning).prune()
    assert done is not None and done.runs == 1


PRUNE_APP = """
import os
from celery import Celery
from celeryflow import Flow, cron

app = Celery("prune_app", broker="celeryflow+sqlite:///" + os.environ["CF_DIR"] + "/broker.db")
flow = Flow(app, store=os.environ["CF_TEST_STORE"], retention="30 days")


@flow.function(id="hourly", trigger=cron("0 * * * *"))
def hourly(ctx):
    return 1
"""


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The installed ``celeryflow`` script, as a user runs it."""
    env = {k: v for k, v in os.environ.items() if k not in ("CELERYFLOW_STORE", "CELERY_APP")}
    script = str(Path(sys.executable).with_name("celeryflow"))
    env.update(CF_DIR=str(cwd), CF_TEST_STORE=f"sqlite:///{cwd}/store.db")
    return subprocess.run(
        [script, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_cli_prune(tmp_path: Path) -> None:
    (tmp_path / "prune_app.py").write_text(PRUNE_APP)
    store = f"sqlite:///{tmp_path}/store.db"
    flow = _flow(store, tmp_path)
    _insert_run(flow, "ancient", S.COMPLETED, utcnow() - timedelta(days=40))
    _insert_run(flow, "young", S.COMPLETED, utcnow() - timedelta(days=10))
    hour = utcnow().replace(minute=0, second=0, microsecond=0)
    with flow.store.engine.begin() as conn:
        conn.execute(
            cron_ticks.insert(),
            [
                {
                    "function_id": "hourly",
                    "scheduled_at": hour - timedelta(hours=h),
                    "fired_at": hour - timedelta(hours=h),
                }
                for h in range(0, 24 * 40, 24)
            ],
        )

    dry = _cli("--store", store, "prune", "--older-than", "30d", "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("would remove 1 runs, 0 steps"), dry.stdout
    assert "cron ticks: pass -A" in dry.stdout
    assert not _gone(flow, "ancient")
    # -A: the app's retention (30 days) and its schedules (old ticks are history)
    done = _cli("-A", "prune_app", "prune", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "removed 1 runs" in done.stdout and "10 cron ticks" in done.stdout, done.stdout
    assert _gone(flow, "ancient") and not _gone(flow, "young")
    assert _count(flow, "SELECT count(*) FROM cf_cron_ticks") == 30  # the last 30 days
    bad = _cli("--store", store, "prune", "--older-than", "soon", cwd=tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "--older-than" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    none = _cli("--store", store, "prune", cwd=tmp_path)
    assert none.returncode == 2 and "needs --older-than" in none.stderr


def _flat(samples: list[Sample], warm_up: int) -> tuple[int, int]:
    """(the largest size during warm-up, the largest after it). A size read after a
    cycle depends on how many rows that cycle left for the pruner (bounded, and
    asserted so, but not the same each time): the high-water marks are compared."""
    baseline = max(s.store_bytes for s in samples[1:warm_up])
    return baseline, max(s.store_bytes for s in samples[warm_up:])


def _stops_rising(sizes: list[int]) -> bool:
    """The second half's high-water mark within 10% of the first half's."""
    half = len(sizes) // 2
    return max(sizes[half:]) <= max(sizes[:half]) * 1.1


@pytest.mark.parametrize("stack", ["embedded", "redis-postgres"], indirect=True)
def test_store_stays_flat_over_cycles(stack: Stack) -> None:
    """20 cycles of 150 runs (100 on PostgreSQL, slower per run here) with a retention
    of 1 s (bench/retention.py runs 1,000 per cycle): after 5 warm-up cycles every
    table's rows stay bounded, the store's size (SQLite: its pages in use; PostgreSQL:
    its tables after VACUUM) stays within 10%, and so does the embedded broker's file,
    whose delivered messages are deleted."""
    per_cycle, warm_up = (150 if stack.name == "embedded" else 100), 5
    flow = make_flow(stack, **SETTINGS)
    define(flow)
    broker = stack.broker_url.removeprefix("celeryflow+sqlite:///")
    embedded = stack.broker_url.startswith("celeryflow+sqlite")
    with worker(flow, concurrency=4):
        samples = run_cycles(
            flow, cycles=20, per_cycle=per_cycle, broker_path=broker if embedded else None
        )
    for sample in samples[warm_up:]:
        rows = sample.rows
        assert rows["cf_runs"] <= per_cycle + 10, sample
        assert rows["cf_steps"] <= 2 * per_cycle + 10, sample
        assert rows["cf_events"] <= per_cycle, sample
        assert rows["cf_waits"] <= per_cycle, sample
        assert rows["cf_flow_keys"] <= per_cycle + 1, sample
        assert rows["cf_cron_ticks"] <= 100, sample  # CRON_MARGIN keeps a minute of them
        assert rows["cf_wait_fields"] <= 1, sample
    # A cycle in which the pruner or the worker fell behind (a loaded machine: CI's
    # three test processes on two cores) leaves a higher high-water mark, in the store
    # and in the broker's file alike, since neither gives pages back: what must hold is
    # that the mark stops rising, not that no cycle ever raised it.
    baseline, largest = _flat(samples, warm_up)
    sizes = [s.store_bytes for s in samples]
    assert largest <= baseline * 1.1 or _stops_rising(sizes[warm_up:]), sizes
    if embedded:
        sizes = [s.broker_bytes or 0 for s in samples]
        assert _stops_rising(sizes[warm_up:]), sizes
        assert all((s.broker_messages or 0) <= 5 for s in samples), samples
    assert set(samples[-1].rows) == set(TABLES)
