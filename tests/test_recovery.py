"""Recovery does not wait behind the backlog, and a backlog is not re-rung.

A run left ``running`` by a killed executor is rung on the recovery queue, which
every worker consuming the flow's queue also consumes, so it resumes within lease +
reconcile interval + 10 s however many runs are queued. Queued runs whose doorbell is
still in the broker are not rung again while they wait (issue 12, item 7)."""

from __future__ import annotations

import importlib
import os
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flowkit import apps_env, make_flow, worker_process
from kombu import Queue
from services import Stack

from celeryflow import Event, Flow, RunStatus, event
from celeryflow.durations import utcnow
from celeryflow.planning import new_run_id
from celeryflow.store import Store
from celeryflow.store.tables import runs
from celeryflow.testing import wait_for, wait_for_run, worker

APPS = Path(__file__).parent / "apps"
BACKLOG = 200
LEASE, RECONCILE = 3.0, 1.0  # recovery_app's settings


# SIGTERM at the end is a warm shutdown: the backlog stays in the broker
PREFORK_WORKER = [
    sys.executable,
    "-m",
    "celery",
    "-A",
    "recovery_app",
    "worker",
    "--pool",
    "prefork",
    "-c",
    "2",
    "-n",
    "recovery@%h",
    "--loglevel",
    "INFO",
    "--without-mingle",
    "--without-gossip",
]


def count(flow: Flow, function_id: str, status: RunStatus) -> int:
    with flow.store.engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count()).where(
                    runs.c.function_id == function_id, runs.c.status == status.value
                )
            ).scalar_one()
        )


def journal_lines(journal: Path) -> list[str]:
    return journal.read_text().split()[0::2]


def test_killed_run_resumes_ahead_of_the_backlog(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = tmp_path / "journal.txt"
    journal.touch()
    env = {
        "CF_BROKER": stack.broker_url,
        "CF_STORE": stack.store_url,
        "CF_QUEUE": stack.queue,
        "CF_JOURNAL": str(journal),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.syspath_prepend(str(APPS))
    sys.modules.pop("recovery_app", None)
    flow: Flow = importlib.import_module("recovery_app").flow
    log = tmp_path / "worker.log"
    try:
        with worker_process(PREFORK_WORKER, apps_env(), tmp_path, log, tail=6000):
            [victim] = flow.send(Event(name="t/victim"))
            wait_for(lambda: "two-start" in journal_lines(journal), timeout=60, what="step two")
            flow.send([Event(name="t/backlog") for _ in range(BACKLOG)])
            executor = int(journal.read_text().split()[-1])
            os.kill(executor, signal.SIGKILL)
            killed_at = time.monotonic()
            wait_for(
                lambda: "two-end" in journal_lines(journal), timeout=90, what="the victim resumed"
            )
            recovered_in = time.monotonic() - killed_at
            waiting = count(flow, "backlog", RunStatus.QUEUED)
            run = wait_for_run(flow, event_id=victim, timeout=30)
    finally:
        sys.modules.pop("recovery_app", None)
    assert run.status == RunStatus.COMPLETED, run.error
    assert journal_lines(journal) == ["one", "two-start", "two-start", "two-end"]
    print(f"recovered in {recovered_in:.1f} s with {waiting} runs still queued")
    assert recovered_in < LEASE + RECONCILE + 10, log.read_text()[-8000:]
    assert waiting > BACKLOG // 4  # the backlog was still there: recovery did not wait


def pause(seconds: float) -> None:
    time.sleep(seconds)


def rings(flow: Flow) -> int:
    """Doorbells the reconciler sent: ``dispatches`` counts each of its rings."""
    with flow.store.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.sum(runs.c.dispatches))).scalar_one())


@pytest.mark.parametrize("late", [False, True], ids=["worker-up-at-once", "worker-up-late"])
@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
def test_a_backlog_waiting_in_the_broker_is_not_rung_again(stack: Stack, late: bool) -> None:
    flow = make_flow(stack, redeliver_after="2s")  # held back for up to 8 x 2 s

    @flow.function(id="queued", trigger=event("t/queued"))
    def queued(ctx):  # type: ignore[no-untyped-def]
        ctx.step.run("work", pause, 0.05)

    n = 100  # about 6 s of work
    flow.send([Event(name="t/queued") for _ in range(n)])
    if late:
        # The worker comes up after the backlog is due, as on a loaded machine: its
        # reconciler's first pass may come before its first claim. That pass once
        # rang the whole backlog ("nothing moves"), and every run rung was then rung
        # again at each back-off step while the backlog drained (227 rings).
        back = timedelta(seconds=3)
        with flow.store.engine.begin() as conn:
            rows = conn.execute(sa.select(runs.c.id, runs.c.created_at, runs.c.due_at)).all()
            conn.execute(
                runs.update()
                .where(runs.c.id == sa.bindparam("rid"))
                .values(created_at=sa.bindparam("c"), due_at=sa.bindparam("d")),
                [{"rid": r.id, "c": r.created_at - back, "d": r.due_at - back} for r in rows],
            )
    with worker(flow, concurrency=1):
        wait_for(
            lambda: count(flow, "queued", RunStatus.COMPLETED) == n,
            timeout=120,
            what="the backlog drained",
        )
    rang = rings(flow)
    print(f"{n} queued runs: {n} doorbells sent by send(), {rang} by the reconciler")
    assert rang <= n // 10  # 220 when each waiting run was re-rung every 2 s


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
def test_a_doorbell_lost_on_an_idle_system_is_rung_after_redeliver_after(stack: Stack) -> None:
    flow = make_flow(stack, redeliver_after="3s")

    @flow.function(id="lost", trigger=event("t/lost"))
    def lost(ctx):  # type: ignore[no-untyped-def]
        return ctx.step.run("work", lambda: "done")

    [event_id] = flow.send(Event(name="t/lost"))
    with flow.app.connection_for_write() as conn:
        conn.default_channel.queue_purge(stack.queue)  # our test queue: the doorbell is lost
    started = time.monotonic()
    with worker(flow):
        run = wait_for_run(flow, event_id=event_id, timeout=60)
    took = time.monotonic() - started
    assert run.status == RunStatus.COMPLETED
    assert rings(flow) == 1
    # not held back as "still in line" (that would last 8 x redeliver_after = 24 s)
    assert took < 3 + 1 + 8, f"{took:.1f} s"


def test_a_worker_started_with_q_consumes_the_recovery_queue(stack: Stack) -> None:
    flow = make_flow(stack, lease="2s")
    # Celery raises for an unknown queue under this setting: the recovery queue is
    # added to the routing table by celeryflow itself.
    flow.app.conf.task_create_missing_queues = False
    flow.app.conf.task_queues = [Queue(stack.queue)]

    @flow.function(id="orphan", trigger=event("t/orphan"))
    def orphan(ctx):  # type: ignore[no-untyped-def]
        return ctx.step.run("work", lambda: "done")

    [event_id] = flow.send(Event(name="t/orphan"))
    [queued] = flow.store.list_runs(event_id=event_id)
    with flow.store.session() as session:  # an executor that dies at once
        now = utcnow()
        assert session.claim(queued.id, "dead@host", now, now + timedelta(seconds=2))
    with worker(flow, queues=[stack.queue]) as w:
        assert f"{stack.queue}.recovery" in w.app.amqp.queues.consume_from
        run = wait_for_run(flow, event_id=event_id, timeout=60)
    assert run.status == RunStatus.COMPLETED
    assert [s.id for s in run.steps] == ["work"]


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
def test_a_worker_not_serving_the_flow_leaves_its_recovery_queue_alone(stack: Stack) -> None:
    flow = make_flow(stack)
    flow.app.conf.task_queues = [Queue(stack.queue), Queue(f"{stack.queue}-other")]
    with worker(flow, queues=[f"{stack.queue}-other"]) as w:
        assert list(w.app.amqp.queues.consume_from) == [f"{stack.queue}-other"]


# -- the due pass's rules, on each store ---------------------------------------------

REDELIVER = timedelta(seconds=30)
LOOKAHEAD = timedelta(seconds=2)


def run_row(status: str = "queued", *, age: float = 40.0, **values: Any) -> dict[str, Any]:
    now = utcnow()
    row: dict[str, Any] = {
        "id": new_run_id(),
        "function_id": "f",
        "event_id": None,
        "events": '[{"name":"x","data":{},"id":"e","ts":1}]',
        "status": status,
        "attempt": 0,
        "fence": 0,
        "dispatches": 0,
        "due_at": now - timedelta(seconds=1),
        "created_at": now - timedelta(seconds=age),
        "started_at": None,
        "ended_at": None,
        "lease_owner": None,
        "lease_expires_at": None,
        "wake_at": None,
    }
    if status != "queued":
        row.update(fence=1, started_at=now - timedelta(seconds=age - 1))
    if status == "running":
        lease = now + timedelta(seconds=10)
        row.update(lease_owner="w@h", lease_expires_at=lease, due_at=lease)
    if status == "completed":
        row.update(due_at=None, ended_at=now)
    row.update(values)
    return row


def due_state(store: Store, run_id: str) -> tuple[Any, int]:
    with store.engine.connect() as conn:
        row = conn.execute(
            sa.select(runs.c.due_at, runs.c.dispatches).where(runs.c.id == run_id)
        ).one()
    return row.due_at, int(row.dispatches)


def test_a_run_in_line_is_held_while_the_workers_work_through_older_runs(
    store_url: str,
) -> None:
    store = Store(store_url, auto_migrate=True)
    executing = run_row("running", age=60)  # older than the queued run, started recently
    queued = run_row(age=40)
    store.insert_runs([executing, queued])
    now = utcnow()
    assert store.take_due(now, LOOKAHEAD, REDELIVER) == []
    due_at, dispatches = due_state(store, queued["id"])
    assert dispatches == 0
    assert abs((due_at - (now + REDELIVER)).total_seconds()) < 1  # looked at again later

    # A run created after it was claimed: its doorbell should have come first.
    store.insert_runs([run_row("completed", age=1)])
    later = now + REDELIVER + timedelta(seconds=1)  # the executing run's lease lapsed too
    taken = {d.id: d.recovered for d in store.take_due(later, LOOKAHEAD, REDELIVER)}
    assert taken == {queued["id"]: False, executing["id"]: True}
    assert due_state(store, queued["id"])[1] == 1


def test_a_run_in_line_is_rung_when_nothing_moves_or_it_waited_too_long(
    store_url: str,
) -> None:
    store = Store(store_url, auto_migrate=True)
    idle = run_row(age=40)
    store.insert_runs([run_row("completed", age=600), idle])  # claimed long ago
    assert [d.id for d in store.take_due(utcnow(), LOOKAHEAD, REDELIVER)] == [idle["id"]]

    store.insert_runs([run_row("running", age=900)])  # busy with older runs...
    waited = run_row(age=8 * 30 + 1)  # ...but this one has waited 8 x redeliver_after
    store.insert_runs([waited])
    assert [d.id for d in store.take_due(utcnow(), LOOKAHEAD, REDELIVER)] == [waited["id"]]


def test_the_look_ahead_does_not_ring_a_queued_run_before_it_is_due(store_url: str) -> None:
    store = Store(store_url, auto_migrate=True)
    now = utcnow()
    soon = now + timedelta(seconds=1)  # within the look-ahead; nothing ever claimed
    queued = run_row(age=1, due_at=soon)
    store.insert_runs([queued])
    assert store.take_due(now, LOOKAHEAD, REDELIVER) == []
    due_at, dispatches = due_state(store, queued["id"])
    assert (due_at.replace(tzinfo=None), dispatches) == (soon.replace(tzinfo=None), 0)


def test_a_run_rung_before_the_workers_moved_is_still_in_line(store_url: str) -> None:
    store = Store(store_url, auto_migrate=True)
    # rung once by a pass before any claim; now the workers are busy with older runs
    queued = run_row(age=40, dispatches=1)
    store.insert_runs([run_row("running", age=60), queued])
    assert store.take_due(utcnow(), LOOKAHEAD, REDELIVER) == []
    assert due_state(store, queued["id"])[1] == 1


def test_a_worker_that_just_began_consuming_holds_the_backlog_before_its_first_claim(
    store_url: str,
) -> None:
    store = Store(store_url, auto_migrate=True)
    queued = run_row(age=40)  # nothing ever claimed
    store.insert_runs([queued])
    now = utcnow()
    just = now - timedelta(seconds=1)
    assert store.take_due(now, LOOKAHEAD, REDELIVER, consuming_since=just) == []
    later = now + REDELIVER + timedelta(seconds=1)  # consuming for long, still no claim
    taken = store.take_due(later, LOOKAHEAD, REDELIVER, consuming_since=just)
    assert [d.id for d in taken] == [queued["id"]]


def test_re_rings_back_off_to_eight_times_redeliver_after(store_url: str) -> None:
    store = Store(store_url, auto_migrate=True)
    rows = {n: run_row(dispatches=n, started_at=utcnow()) for n in (1, 2, 3, 7)}
    store.insert_runs(list(rows.values()))
    now = utcnow()
    assert len(store.take_due(now, LOOKAHEAD, REDELIVER)) == 4
    for n, factor in {1: 2, 2: 4, 3: 8, 7: 8}.items():
        due_at, dispatches = due_state(store, rows[n]["id"])
        assert dispatches == n + 1
        assert abs((due_at - (now + REDELIVER * factor)).total_seconds()) < 1, n


def test_a_live_lease_is_not_rung_by_the_look_ahead(store_url: str) -> None:
    store = Store(store_url, auto_migrate=True)
    now = utcnow()
    lease = now + timedelta(seconds=1)
    executing = run_row("running", lease_expires_at=lease, due_at=lease)
    store.insert_runs([executing])
    assert store.take_due(now, LOOKAHEAD, REDELIVER) == []
    assert due_state(store, executing["id"]) == (lease, 0)  # still due at the lease's end
    [taken] = store.take_due(lease + timedelta(seconds=1), LOOKAHEAD, REDELIVER)
    assert taken.recovered


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
def test_a_recovery_queue_nobody_consumes_delays_recovery_but_does_not_lose_it(
    stack: Stack,
) -> None:
    flow = make_flow(stack, lease="2s", redeliver_after="3s")

    @flow.function(id="orphan", trigger=event("t/orphan"))
    def orphan(ctx):  # type: ignore[no-untyped-def]
        return ctx.step.run("work", lambda: "done")

    [event_id] = flow.send(Event(name="t/orphan"))
    [queued] = flow.store.list_runs(event_id=event_id)
    with flow.store.session() as session:  # an executor that dies at once
        now = utcnow()
        assert session.claim(queued.id, "dead@host", now, now + timedelta(seconds=2))
    with worker(flow) as w:
        recovery = f"{stack.queue}.recovery"
        replies = flow.app.control.cancel_consumer(recovery, destination=[w.hostname], reply=True)
        assert replies, "the worker did not answer cancel_consumer"
        run = wait_for_run(flow, event_id=event_id, timeout=60)
    assert run.status == RunStatus.COMPLETED


def test_a_cancelled_runs_end_is_told_once_by_whoever_clears_its_mark(store_url: str) -> None:
    """cancel_run leaves due_at as an "end not told" mark (hooks.py): due at once for
    a parked run, at the lease's end for a running one (MariaDB evaluates SET left to
    right, so this also checks the mark reads the run's old status and lease)."""
    store = Store(store_url, auto_migrate=True)
    now = utcnow()
    parked = run_row("sleeping", fence=1, wake_at=now + timedelta(hours=1))
    parked["due_at"] = now + timedelta(hours=1)
    running = run_row("running", age=60)  # its lease ends in 10 s
    taken_by_executor = run_row("running", age=60)
    store.insert_runs([parked, running, taken_by_executor])
    for row in (parked, running, taken_by_executor):
        assert store.cancel(row["id"], now)
    # the executor of one running run finds it cancelled and tells the hooks first
    assert store.report_cancelled(taken_by_executor["id"])
    assert not store.report_cancelled(taken_by_executor["id"])

    ended: list[dict[str, Any]] = []
    assert store.take_due(utcnow(), LOOKAHEAD, REDELIVER, ended=ended) == []
    assert [r["id"] for r in ended] == [parked["id"]]  # the running one: after its lease
    assert ended[0]["function_id"] == "f" and ended[0]["events"]
    assert not store.report_cancelled(parked["id"])  # told: nobody tells it again

    later: list[dict[str, Any]] = []
    after_lease = utcnow() + timedelta(seconds=11)
    assert store.take_due(after_lease, LOOKAHEAD, REDELIVER, ended=later) == []
    assert [r["id"] for r in later] == [running["id"]]
    again: list[dict[str, Any]] = []
    store.take_due(after_lease, LOOKAHEAD, REDELIVER, ended=again)
    assert again == []
