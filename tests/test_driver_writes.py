"""On SQLite new step rows, the claim and the usual finish are written on the
driver's cursor (store/prepared.py): the parameters sent and the rows read back are
exactly SQLAlchemy's, a write past a lost fence lands nothing, and a driver error
falls back to SQLAlchemy's path, which says why."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from celery import Celery
from services import embedded_broker_url, unique_name

from celeryflow import Event, Flow, RunStatus, event
from celeryflow.durations import utcnow
from celeryflow.store import Store
from celeryflow.store.capabilities import Capabilities
from celeryflow.store.flowkeys import SlotHandOver
from celeryflow.store.prepared import DriverStatement
from celeryflow.store.session_sql import SessionStatements
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
    # the claim, every step row and the finish (carrying the last) went on the driver
    writes = [s for s in through_sqlalchemy if s.startswith(("INSERT INTO cf_steps", "UPDATE"))]
    assert writes == []
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


def _general(session: Any) -> Any:
    """``session`` on SQLAlchemy's path (the fast paths off)."""
    session.sql = SessionStatements(Capabilities.of(session.conn.dialect, fast_paths=False))
    return session


def _sent(store: Store, statement: Any, params: dict[str, Any]) -> tuple[str, list[Any]]:
    """The SQL and parameters SQLAlchemy sends for ``statement`` (rolled back)."""
    seen: list[tuple[str, list[Any]]] = []
    with store.engine.connect() as conn:
        sa.event.listen(conn, "before_cursor_execute", lambda *a: seen.append((a[2], list(a[3]))))
        with conn.begin() as transaction:
            conn.execute(statement, params)
            transaction.rollback()
    return seen[0]


def test_the_driver_sends_what_sqlalchemy_sends(tmp_path: Path) -> None:
    flow = _flow(tmp_path)
    store = flow.store
    sql = store.session_statements()
    now = utcnow()
    claim = {"rid": "r1", "owner": "me", "now": now, "lease_until": now + timedelta(seconds=9)}
    finish = {"rid": "r1", "p_fence": 3, "p_output": "1", "p_error": None, "now": now}
    move = {"rid": "r1", "p_fence": 3, "p_wake_at": now, "p_due_at": now, "p_attempt": 1}
    step = {**_row(_FakeClaim(), "k"), "fence": 2}
    cases = [
        (sql.claim, sql.claim_on_driver, claim),
        (sql.load_steps, sql.load_steps_on_driver, {"rid": "r1"}),
        (sql.insert_step, sql.insert_step_on_driver, step),
        *((sql.finish[s], sql.run_update_on_driver[s], finish) for s in sql.finish),
        *((sql.move[s], sql.run_update_on_driver[s], move) for s in sql.move),
    ]
    for statement, on_driver, params in cases:
        assert isinstance(on_driver, DriverStatement)
        sent_sql, sent_params = _sent(store, statement, params)
        if statement is sql.insert_step:  # the driver counts rows instead of RETURNING
            sent_sql = sent_sql.split(" RETURNING ")[0]
        assert (on_driver.sql, on_driver.parameters(params)) == (sent_sql, sent_params)


class _FakeClaim:
    run = {"id": "r1"}


def test_claims_read_back_as_sqlalchemy_reads_them(tmp_path: Path) -> None:
    flow = _flow(tmp_path)
    session, on_driver = _one_session(flow)  # claimed on the driver
    run_id = on_driver.run["id"]
    with session:
        assert session.save_steps(on_driver.fence, [(_row(on_driver, "a"), True)])
        # the lease lapses: claimed again, through SQLAlchemy, then on the driver
        later = utcnow() + timedelta(days=400)
        general = _general(flow.store.session())
        with general:
            by_sqlalchemy = general.claim(run_id, "test", later, later + timedelta(days=1))
        later += timedelta(days=2)
        again = session.claim(run_id, "test", later, later + timedelta(days=1))
    assert by_sqlalchemy is not None and again is not None
    assert again.fence == by_sqlalchemy.fence + 1 == on_driver.fence + 2
    for claimed in (on_driver, again):
        assert type(claimed.run) is type(by_sqlalchemy.run)
        theirs = {k: v for k, v in by_sqlalchemy.run.items() if k != "fence"}
        assert {k: v for k, v in claimed.run.items() if k != "fence"} == theirs
        assert [type(v) for v in claimed.run.values()] == [
            type(v) for v in by_sqlalchemy.run.values()
        ]
    assert by_sqlalchemy.run["created_at"].tzinfo is not None
    assert again.steps == by_sqlalchemy.steps and list(again.steps) == ["a"]
    mine, theirs = again.steps["a"], by_sqlalchemy.steps["a"]
    assert [type(v) for v in mine.values()] == [type(v) for v in theirs.values()]
    assert mine["started_at"].tzinfo is not None


def _stored(tmp_path: Path, run_id: str) -> dict[str, Any]:
    raw = sqlite3.connect(tmp_path / "store.db")
    raw.row_factory = sqlite3.Row
    row = dict(raw.execute("SELECT * FROM cf_runs WHERE id = ?", (run_id,)).fetchone())
    raw.close()
    return row


def test_a_finish_on_the_driver_stores_what_sqlalchemy_stores(tmp_path: Path) -> None:
    flow = _flow(tmp_path)
    stored = []
    for session in (None, "general"):
        driver_session, claim = _one_session(flow)
        with driver_session as chosen:
            if session == "general":
                chosen = _general(chosen)
            now = utcnow().replace(microsecond=0)  # all six digits still written
            held, _ = chosen.finish(
                claim.run["id"],
                claim.fence,
                status=RunStatus.COMPLETED,
                now=now,
                output="7",
                writes=[(_row(claim, "last"), True)],
            )
        assert held
        row = _stored(tmp_path, claim.run["id"])
        assert len(row["ended_at"]) == len("2026-12-02 15:00:00.000000")
        stored.append(
            {
                k: v
                for k, v in row.items()
                if k
                not in (
                    "id",
                    "event_id",
                    "events",
                    "created_at",
                    "started_at",
                    "ended_at",
                    "queue_at",
                )
            }
        )
        assert [s.id for s in flow.get_run(claim.run["id"]).steps] == ["last"]
    assert stored[0] == stored[1]


def test_a_stale_finish_on_the_driver_lands_nothing(tmp_path: Path) -> None:
    flow = _flow(tmp_path)
    session, claim = _one_session(flow)
    with session:
        held, _ = session.finish(
            claim.run["id"],
            claim.fence - 1,
            status=RunStatus.COMPLETED,
            now=utcnow(),
            writes=[(_row(claim, "last"), True)],
        )
    assert not held
    run = flow.get_run(claim.run["id"])
    assert run.status == RunStatus.RUNNING and run.steps == []


def test_a_driver_error_in_a_finish_falls_back_and_is_named(tmp_path: Path) -> None:
    flow = _flow(tmp_path)
    session, claim = _one_session(flow)
    with session:
        assert session.save_steps(claim.fence, [(_row(claim, "a"), True)])
        with pytest.raises(sa.exc.IntegrityError):  # the step's key exists
            session.finish(
                claim.run["id"],
                claim.fence,
                status=RunStatus.COMPLETED,
                now=utcnow(),
                writes=[(_row(claim, "a"), True)],
            )
        assert not session.conn.in_transaction()
    assert flow.get_run(claim.run["id"]).status == RunStatus.RUNNING


def test_a_driver_error_in_a_claim_falls_back_and_is_named(tmp_path: Path) -> None:
    flow = _flow(tmp_path)
    flow.send(Event(name="driver/go", id="e1"))
    run_id = flow.list_runs(function_id="steps", limit=1)[0].id
    raw = sqlite3.connect(tmp_path / "store.db")
    raw.execute(
        "CREATE TRIGGER refuse BEFORE UPDATE ON cf_runs WHEN NEW.lease_owner = 'refused' "
        "BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )
    raw.commit()
    raw.close()
    now = utcnow()
    with flow.store.session() as session:
        with pytest.raises(sa.exc.IntegrityError, match="refused"):
            session.claim(run_id, "refused", now, now + timedelta(minutes=1))
        assert not session.conn.in_transaction()
        claim = session.claim(run_id, "accepted", now, now + timedelta(minutes=1))
    assert claim is not None and claim.first
    assert flow.get_run(run_id).status == RunStatus.RUNNING


def test_a_claim_needing_a_slot_takes_sqlalchemys_path(tmp_path: Path) -> None:
    flow = _flow(tmp_path)
    flow.send(Event(name="driver/go", id="e1"))
    run_id = flow.list_runs(function_id="steps", limit=1)[0].id
    asked: list[str] = []

    def limits(function_id: str) -> list[int]:
        asked.append(function_id)
        return [1]

    now = utcnow()
    with flow.store.session() as session:
        seen = _statements(flow)
        claim = session.claim(run_id, "me", now, now + timedelta(minutes=1), slot_limits=limits)
    assert claim is not None and claim.fence == 1
    # asked on the driver (rolled back), then on SQLAlchemy's path, which took the slot
    assert asked == ["steps", "steps"]
    assert any(s.startswith("UPDATE cf_runs") for s in seen)


def test_a_finish_handing_its_slot_over_takes_sqlalchemys_path(tmp_path: Path) -> None:
    flow = _flow(tmp_path)
    session, claim = _one_session(flow)
    hand_over = SlotHandOver(
        function_id="steps", keys=[None], limits=[1], owner="me", lease=timedelta(minutes=1)
    )
    with session:
        seen = _statements(flow)
        held, _ = session.finish(
            claim.run["id"],
            claim.fence,
            status=RunStatus.COMPLETED,
            now=utcnow(),
            writes=[(_row(claim, "last"), True)],
            hand_over=hand_over,
        )
    assert held
    # the end and the hand-over's look-up share SQLAlchemy's transaction
    assert any(s.startswith("UPDATE cf_runs") for s in seen), seen
    assert flow.get_run(claim.run["id"]).status == RunStatus.COMPLETED
