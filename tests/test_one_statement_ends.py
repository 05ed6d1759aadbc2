"""On PostgreSQL the commonest ends take one self-fencing statement in autocommit on
psycopg's cursor (store/one_statement.py, store/session_driver.py), where a
transaction costs BEGIN, a statement a row and COMMIT, through SQLAlchemy:

* a run that ends (or parks) with a step row it already has, updated (a sleep that
  ended, a step that succeeded on a later attempt); a lone step update and the step
  loads of a claim go on the driver too;
* a run of a concurrency-limited function that ends and hands its slot to the run
  next in line, claimed in the same statement.

Each statement writes all its rows or none: past a lost fence, or without the step
row, nothing lands."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flowkit import make_flow
from services import Stack
from sqltrace import pg_statements

from celeryflow import Concurrency, Event, Flow, RunStatus, event
from celeryflow.durations import utcnow
from celeryflow.store.flowkeys import SlotHandOver
from celeryflow.store.tables import runs, steps
from celeryflow.testing import wait_for, wait_for_run, worker

pytestmark = pytest.mark.parametrize("stack", ["redis-postgres"], indirect=True)


def _flow(stack: Stack) -> Flow:
    """A flow whose worker writes only what a run makes (no reconciler pass, no lease
    renewal), on a store with its fast paths on."""
    flow = make_flow(stack, reconcile_interval="1h", lease="1h")
    flow.store.migrate()
    if not flow.store.capabilities.one_statement_writes:
        pytest.skip("the store's fast paths are off (tests/test_general_path.py's rerun)")
    return flow


@contextmanager
def _traced(flow: Flow) -> Iterator[tuple[list[tuple[str, bool]], list[str]]]:
    """The writes sent on the store's connections (each with whether its connection
    was in autocommit), and every statement that went through SQLAlchemy's execute
    path (the driver's cursor skips it)."""
    written: list[tuple[str, bool]] = []
    through_sqlalchemy: list[str] = []

    def on_statement(sql: str, autocommit: bool, _conn: int) -> None:
        if sql.split(None, 1)[0].upper() in ("INSERT", "UPDATE", "DELETE", "WITH", "BEGIN"):
            written.append((sql, autocommit))

    def on_execute(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        through_sqlalchemy.append(" ".join(statement.split()))

    sa.event.listen(flow.store.engine, "before_cursor_execute", on_execute)
    try:
        with pg_statements(flow.store.engine, on_statement):
            yield written, through_sqlalchemy
    finally:
        sa.event.remove(flow.store.engine, "before_cursor_execute", on_execute)


def _session_step_sql(statements: list[str]) -> list[str]:
    """The run session's statements on cf_steps among ``statements`` (its step loads
    name the run ``rid``; the test's own reads of the run name it otherwise)."""
    mine = ("UPDATE cf_steps", "INSERT INTO cf_steps", "WITH ended")
    return [s for s in statements if s.startswith(mine) or "cf_steps.run_id = %(rid)s" in s]


def test_a_run_ending_at_its_sleeps_end_ends_in_one_statement_on_the_driver(
    stack: Stack,
) -> None:
    # The sleep's completion rides in the finish. As a transaction (BEGIN, the step's
    # UPDATE, the run's UPDATE, COMMIT, through SQLAlchemy) the wake-up of such a run
    # cost 2.0 ms of CPU against 0.8 ms for its first execution (bench/RESULTS.md).
    flow = _flow(stack)

    @flow.function(id="napper", trigger=event("t/napper"))
    def napper(ctx):  # type: ignore[no-untyped-def]
        ctx.step.sleep("nap", 0.2)
        return "awake"

    with _traced(flow) as (written, through_sqlalchemy), worker(flow):
        [event_id] = flow.send(Event(name="t/napper"))
        run = wait_for_run(flow, event_id=event_id)

    assert (run.status, run.output) == (RunStatus.COMPLETED, "awake")
    [nap] = run.steps
    assert (nap.id, nap.status) == ("nap", "completed") and nap.ended_at is not None
    # the send, the claim, the park, the claim at the wake, the finish with the step
    assert len(written) == 5, written
    assert all(autocommit for _, autocommit in written), written
    finish = written[-1][0]
    assert finish.startswith("WITH ended AS (UPDATE cf_runs") and "UPDATE cf_steps" in finish
    # the claims' step loads and the finish skipped SQLAlchemy's execute path
    assert _session_step_sql(through_sqlalchemy) == []


def test_a_lone_step_update_and_the_step_loads_go_on_the_driver(stack: Stack) -> None:
    flow = _flow(stack)

    @flow.function(id="napper2", trigger=event("t/napper2"))
    def napper2(ctx):  # type: ignore[no-untyped-def]
        ctx.step.sleep("nap", 0.2)
        return ctx.step.run("after", lambda: "awake")

    with _traced(flow) as (written, through_sqlalchemy), worker(flow):
        [event_id] = flow.send(Event(name="t/napper2"))
        run = wait_for_run(flow, event_id=event_id)

    assert (run.status, run.output) == (RunStatus.COMPLETED, "awake")
    assert [(s.id, s.status) for s in run.steps] == [
        ("nap", "completed"),
        ("after", "completed"),
    ]
    # the sleep's completion is written by itself before the next step works
    lone = [sql for sql, _ in written if sql.startswith("UPDATE cf_steps")]
    assert len(lone) == 1 and all(autocommit for _, autocommit in written), written
    assert _session_step_sql(through_sqlalchemy) == []


def _sleeping(flow: Flow) -> str:
    """A run parked on a sleep of an hour, its worker stopped."""

    @flow.function(id="sleeper", trigger=event("t/sleeper"))
    def sleeper(ctx):  # type: ignore[no-untyped-def]
        ctx.step.sleep("nap", "1h")
        return "awake"

    with worker(flow):
        [event_id] = flow.send(Event(name="t/sleeper"))
        [run] = wait_for(
            lambda: flow.list_runs(event_id=event_id, status="sleeping"), what="a sleeping run"
        )
    return run.id


def _ended_nap(claim: Any) -> dict[str, Any]:
    row = dict(claim.steps["nap"])
    row.update(status="completed", ended_at=utcnow(), wake_at=row["wake_at"])
    return row


def _rows(flow: Flow, run_id: str) -> tuple[Any, Any]:
    with flow.store.engine.connect() as conn:
        run = conn.execute(sa.select(runs).where(runs.c.id == run_id)).mappings().one()
        step = conn.execute(sa.select(steps).where(steps.c.run_id == run_id)).mappings().one()
    return run, step


# "sqlalchemy": the same statement through SQLAlchemy, where the driver's cursor
# refused (a driver error, or another PostgreSQL driver than psycopg 3)
PATHS = ["driver", "sqlalchemy"]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", ["held", "fence lost", "no such step"])
def test_the_finish_with_an_updated_step_writes_both_rows_or_neither(
    stack: Stack, case: str, path: str
) -> None:
    flow = _flow(stack)
    run_id = _sleeping(flow)
    later = utcnow() + timedelta(hours=2)  # past the sleep's end
    with flow.store.session() as session:
        if path == "sqlalchemy":
            session.driver = None
        claim = session.claim(run_id, "test", later, later + timedelta(hours=1))
        assert claim is not None
        nap = _ended_nap(claim)
        if case == "fence lost":  # another executor took the run over meanwhile
            takeover = runs.update().where(runs.c.id == run_id).values(fence=runs.c.fence + 1)
            with flow.store.engine.begin() as conn:
                conn.execute(takeover)
        if case == "no such step":
            nap["key"] = "not-a-step"
        held, _ = session.finish(
            run_id,
            claim.fence,
            status=RunStatus.COMPLETED,
            now=later,
            output='"awake"',
            writes=[(nap, False)],
        )
    run, step = _rows(flow, run_id)
    if case == "held":
        assert held
        assert (run["status"], run["output"], run["ended_at"]) == ("completed", '"awake"', later)
        assert (step["status"], step["ended_at"]) == ("completed", nap["ended_at"])
    else:
        assert not held
        assert (run["status"], run["ended_at"]) == ("running", None)
        assert (step["status"], step["ended_at"]) == ("sleeping", None)


def test_a_limited_run_hands_its_slot_on_in_one_statement(stack: Stack) -> None:
    # In-process, a run handed its slot this way costs 1.3-1.9 ms of CPU and 2.6-3.9
    # ms wall, against 4.1-5.3 ms and 6.9-9.8 ms in a transaction (bench/RESULTS.md).
    flow = _flow(stack)
    total = 5

    @flow.function(id="lined", trigger=event("t/lined"), concurrency=Concurrency(limit=1))
    def lined(ctx):  # type: ignore[no-untyped-def]
        return ctx.step.run("s", lambda: ctx.event.data["n"])

    flow.send([Event(name="t/lined", data={"n": n}) for n in range(total)])
    with _traced(flow) as (written, _), worker(flow):
        wait_for(
            lambda: len(flow.list_runs(function_id="lined", status="completed")) == total,
            what="every limited run to complete",
        )

    done = flow.list_runs(function_id="lined")
    assert sorted(r.output for r in done) == list(range(total))
    spans = sorted((r.started_at, r.ended_at) for r in done)  # type: ignore[type-var]
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), "the limit was broken"
    handing = [(sql, auto) for sql, auto in written if "FOR UPDATE SKIP LOCKED" in sql]
    # every end hands the slot on in one statement (the last finds nobody in line)
    assert len(handing) == total, written
    assert all(auto and sql.startswith("WITH ended AS (UPDATE cf_runs") for sql, auto in handing)
    assert all("claimed AS (UPDATE cf_runs" in sql for sql, _ in handing)


def _lined_up(flow: Flow, count: int) -> list[str]:
    """``count`` runs of a function limited to one at a time, queued, no worker."""

    @flow.function(id="one-at-a-time", trigger=event("t/one"), concurrency=Concurrency(limit=1))
    def one_at_a_time(ctx):  # type: ignore[no-untyped-def]
        return ctx.step.run("s", lambda: 1)

    flow.send([Event(name="t/one", data={"n": n}) for n in range(count)])
    queued = flow.list_runs(function_id="one-at-a-time", status="queued")
    return [r.id for r in sorted(queued, key=lambda r: (r.created_at, r.id))]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", ["handed", "fence lost", "nobody in line"])
def test_the_end_handing_its_slot_over_claims_the_next_run_or_writes_nothing(
    stack: Stack, case: str, path: str
) -> None:
    flow = _flow(stack)
    lined = _lined_up(flow, 1 if case == "nobody in line" else 2)
    now = utcnow()
    with flow.store.session() as session:
        if path == "sqlalchemy":
            session.driver = None
        claim = session.claim(
            lined[0], "first", now, now + timedelta(hours=1), slot_limits=lambda _: [1]
        )
        assert claim is not None
        if case == "fence lost":
            takeover = runs.update().where(runs.c.id == lined[0]).values(fence=runs.c.fence + 1)
            with flow.store.engine.begin() as conn:
                conn.execute(takeover)
        hand_over = SlotHandOver(
            "one-at-a-time",
            [claim.run["concurrency_key1"], claim.run["concurrency_key2"]],
            [1],
            "second",
            timedelta(minutes=5),
        )
        assert hand_over.count_neutral
        held, _ = session.finish(
            lined[0],
            claim.fence,
            status=RunStatus.COMPLETED,
            now=now,
            output="1",
            hand_over=hand_over,
        )
        handed = session.handed
    with flow.store.engine.connect() as conn:
        rows = conn.execute(sa.select(runs).where(runs.c.id.in_(lined))).mappings().all()
    status = {r["id"]: r for r in rows}
    if case == "fence lost":
        assert not held and handed is None
        assert status[lined[0]]["status"] == "running" and status[lined[1]]["status"] == "queued"
        return
    assert held and status[lined[0]]["status"] == "completed"
    if case == "nobody in line":
        assert handed is None
        return
    assert handed is not None and handed.run["id"] == lined[1] and handed.first
    after = status[lined[1]]
    assert (after["status"], after["fence"], after["lease_owner"]) == ("running", 1, "second")
    assert after["lease_expires_at"] == now + timedelta(minutes=5)
