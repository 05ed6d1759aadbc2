"""On SQLite a new step row is written on the driver's cursor (store/prepared.py):
the rows read back exactly as SQLAlchemy writes them, a write past a lost fence
lands nothing, and a driver error falls back to SQLAlchemy's path, which says why."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from celery import Celery
from services import embedded_broker_url, unique_name

from celeryflow import Event, Flow, RunStatus, event
from celeryflow.durations import utcnow
from celeryflow.testing import wait_for_run, worker

STEPS = 5


def _flow(tmp_path: Path) -> Flow:
    app = Celery(unique_name("t-driver"), broker=embedded_broker_url(tmp_path))
    app.conf.task_default_queue = unique_name("cf-test")
    app.conf.worker_hijack_root_logger = False
    flow = Flow(app, store=f"sqlite:///{tmp_path / 'store.db'}", auto_migrate=True)

    @flow.function(id="steps", trigger=event("driver/go"), retries=0)
    def steps(ctx: Any) -> int:
        total = 0
        for i in range(STEPS):
            total += ctx.step.run(f"s{i}", lambda i=i: {"i": i, "text": "é\u2028<"})["i"]
        return total

    return flow


def _statements(flow: Flow) -> list[str]:
    seen: list[str] = []
    sa.event.listen(
        flow.store.engine, "before_cursor_execute", lambda *a: seen.append(a[2].lstrip()[:40])
    )
    return seen


def test_step_rows_skip_sqlalchemy_and_read_back_the_same(tmp_path: Path) -> None:
    flow = _flow(tmp_path)
    through_sqlalchemy = _statements(flow)
    with worker(flow):
        flow.send(Event(name="driver/go", id="e1"))
        run = wait_for_run(flow, event_id="e1", timeout=60)
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == sum(range(STEPS))
    # every step row went on the driver but the last, which rides in the finish's
    # transaction (SQLAlchemy's path, with the run's update)
    inserts = [s for s in through_sqlalchemy if s.startswith("INSERT INTO cf_steps")]
    assert len(inserts) == 1, inserts
    assert [s.output for s in run.steps] == [{"i": i, "text": "é\u2028<"} for i in range(STEPS)]
    for step in run.steps:
        assert step.started_at is not None and step.ended_at is not None
        assert step.started_at.tzinfo is not None and step.started_at <= step.ended_at
    # the stored text is SQLAlchemy's own datetime format (microseconds always there),
    # so ordering and range filters on these columns compare like with like
    raw = sqlite3.connect(tmp_path / "store.db")
    stamps = raw.execute("SELECT started_at, ended_at FROM cf_steps").fetchall()
    raw.close()
    assert stamps and all(len(v) == len("2026-12-02 15:00:00.000000") for r in stamps for v in r)


def _one_session(flow: Flow) -> tuple[Any, Any]:
    """A claimed run of ``steps`` and its session (the engine's own store API)."""
    flow.send(Event(name="driver/go", id=unique_name("e")))
    run_id = flow.list_runs(function_id="steps", limit=1)[0].id
    session = flow.store.session()
    now = utcnow()
    claim = session.claim(run_id, "test", now, now.replace(year=now.year + 1))
    assert claim is not None
    return session, claim


def _row(claim: Any, key: str) -> dict[str, Any]:
    now = utcnow()
    return {
        "run_id": claim.run["id"],
        "key": key,
        "name": key,
        "position": 0,
        "kind": "run",
        "status": "completed",
        "output": "1",
        "error": None,
        "attempts": 1,
        "wake_at": None,
        "started_at": now,
        "ended_at": now,
    }


def test_a_write_past_a_lost_fence_lands_nothing(tmp_path: Path) -> None:
    flow = _flow(tmp_path)
    session, claim = _one_session(flow)
    with session:
        assert session.save_steps(claim.fence, [(_row(claim, "a"), True)])
        # two rows in one transaction, the fence lost: neither lands
        stale = claim.fence - 1
        assert not session.save_steps(stale, [(_row(claim, "b"), True), (_row(claim, "c"), True)])
    keys = [s.id for s in flow.get_run(claim.run["id"]).steps]
    assert keys == ["a"]


def test_a_driver_error_falls_back_to_sqlalchemy_which_names_it(tmp_path: Path) -> None:
    flow = _flow(tmp_path)
    session, claim = _one_session(flow)
    with session:
        assert session.save_steps(claim.fence, [(_row(claim, "a"), True)])
        # the same key again: the driver refuses it, SQLAlchemy's path raises its
        # IntegrityError (what the engine's infrastructure rule reads), nothing lands
        with pytest.raises(sa.exc.IntegrityError):
            session.save_steps(claim.fence, [(_row(claim, "b"), True), (_row(claim, "a"), True)])
        assert not session.conn.in_transaction()
    keys = [s.id for s in flow.get_run(claim.run["id"]).steps]
    assert keys == ["a"]
