"""The durable engine on a real worker, on every stack (embedded, Redis+PostgreSQL,
RabbitMQ+MariaDB)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import timedelta

import pytest
from flowkit import make_flow
from services import Stack
from sqlalchemy import event as sa_event
from sqltrace import pg_statements

from celeryflow import (
    Event,
    Flow,
    NonRetriableError,
    RetryAfterError,
    RunStatus,
    StepError,
    event,
)
from celeryflow.testing import wait_for, wait_for_run, worker


def test_steps_run_once_and_sleep_parks_the_run(stack: Stack) -> None:
    flow = make_flow(stack)
    calls: Counter[str] = Counter()

    @flow.function(id="welcome", trigger=event("user/signed_up"))
    def welcome(ctx):  # type: ignore[no-untyped-def]
        email = ctx.step.run(
            "send-welcome", lambda: calls.update(["welcome"]) or ctx.event.data["email"]
        )
        ctx.step.sleep("wait", "1500ms")
        ctx.step.run("send-tips", lambda: calls.update(["tips"]) or "tips")
        return {"email": email}

    with worker(flow):
        [event_id] = flow.send(Event(name="user/signed_up", data={"email": "a@b.c"}))
        sleeping = wait_for_run(flow, event_id=event_id, status="sleeping", timeout=15)
        assert sleeping.wake_at is not None
        assert [s.id for s in sleeping.steps] == ["send-welcome", "wait"]
        run = wait_for_run(flow, event_id=event_id, timeout=20)

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"email": "a@b.c"}
    assert calls == {"welcome": 1, "tips": 1}
    first, wait, tips = run.steps
    assert (wait.kind, wait.status) == ("sleep", "completed")
    assert first.ended_at and tips.started_at and wait.wake_at
    gap = (tips.started_at - first.ended_at).total_seconds()
    lateness = (tips.started_at - wait.wake_at).total_seconds()
    assert gap >= 1.5
    assert lateness < 1.0, f"woke {lateness:.2f}s late"


def test_retry_resumes_at_the_failed_step(stack: Stack) -> None:
    flow = make_flow(stack)
    calls: Counter[str] = Counter()

    def flaky() -> str:
        calls["flaky"] += 1
        if calls["flaky"] < 3:
            raise ConnectionError(f"try {calls['flaky']}")
        return "ok"

    @flow.function(id="retrying", trigger=event("t/retry"), retries=3)
    def retrying(ctx):  # type: ignore[no-untyped-def]
        ctx.step.run("before", lambda: calls.update(["before"]))
        value = ctx.step.run("flaky", flaky)
        return {"value": value, "attempt": ctx.attempt}

    with worker(flow):
        [event_id] = flow.send(Event(name="t/retry"))
        run = wait_for_run(flow, event_id=event_id, timeout=20)

    assert run.status == RunStatus.COMPLETED, run.error
    # after the step succeeded, ctx.attempt is the body's again (as in Inngest, where
    # the next step runs in a new attempt-0 request)
    assert run.output == {"value": "ok", "attempt": 0}
    assert calls == {"before": 1, "flaky": 3}
    assert {s.id: s.attempts for s in run.steps} == {"before": 1, "flaky": 3}


def test_non_retriable_error_fails_the_run_at_once(stack: Stack) -> None:
    flow = make_flow(stack)
    calls: Counter[str] = Counter()

    def refuse() -> None:
        calls["refuse"] += 1
        raise NonRetriableError("card declined")

    @flow.function(id="nonretriable", trigger=event("t/nonretriable"), retries=5)
    def nonretriable(ctx):  # type: ignore[no-untyped-def]
        ctx.step.run("charge", refuse)
        ctx.step.run("never", lambda: calls.update(["never"]))

    with worker(flow):
        [event_id] = flow.send(Event(name="t/nonretriable"))
        run = wait_for_run(flow, event_id=event_id, timeout=20)

    assert run.status == RunStatus.FAILED
    assert calls == {"refuse": 1}
    assert run.error is not None
    assert run.error["type"] == "NonRetriableError"
    assert (run.error["step"], run.error["raised_as"]) == ("charge", "StepError")
    assert "card declined" in run.error["message"]
    assert [(s.id, s.status, s.attempts) for s in run.steps] == [("charge", "failed", 1)]


def test_step_error_is_catchable_and_uncaught_errors_are_stored(stack: Stack) -> None:
    flow = make_flow(stack)

    def broken() -> None:
        raise KeyError("missing-sku")

    @flow.function(id="compensates", trigger=event("t/step-error"), retries=1)
    def compensates(ctx):  # type: ignore[no-untyped-def]
        try:
            ctx.step.run("reserve", broken)
        except StepError as exc:
            ctx.step.run("release", lambda: "released")
            return {"caught": exc.error_type, "step": exc.step_id}
        return {"caught": None}

    @flow.function(id="uncaught", trigger=event("t/step-error"), retries=0)
    def uncaught(ctx):  # type: ignore[no-untyped-def]
        ctx.step.run("reserve", broken)

    with worker(flow):
        [event_id] = flow.send(Event(name="t/step-error"))
        runs = wait_for(
            lambda: (
                [
                    r
                    for r in flow.list_runs(event_id=event_id)
                    if r.status.value in ("completed", "failed")
                ]
                if len(flow.list_runs(event_id=event_id, status=None)) == 2
                and all(
                    r.status.value in ("completed", "failed")
                    for r in flow.list_runs(event_id=event_id)
                )
                else None
            ),
            timeout=20,
            what="both runs to end",
        )

    by_fn = {r.function_id: flow.get_run(r.id) for r in runs}
    caught = by_fn["compensates"]
    assert caught.status == RunStatus.COMPLETED
    assert caught.output == {"caught": "KeyError", "step": "reserve"}
    assert [(s.id, s.status, s.attempts) for s in caught.steps] == [
        ("reserve", "failed", 2),
        ("release", "completed", 1),
    ]
    failed = by_fn["uncaught"]
    assert failed.status == RunStatus.FAILED
    assert failed.error is not None
    assert failed.error["type"] == "KeyError"  # the user's error, not StepError
    assert failed.error["module"] == "builtins"
    assert (failed.error["step"], failed.error["raised_as"]) == ("reserve", "StepError")
    assert "missing-sku" in failed.error["message"]
    assert "KeyError" in failed.error["traceback"]
    assert failed.ended_at is not None


def test_event_ids_deduplicate_within_24_hours(stack: Stack) -> None:
    flow = make_flow(stack)

    @flow.function(id="once", trigger=event("t/dedup"))
    def once(ctx):  # type: ignore[no-untyped-def]
        return ctx.event.data

    with worker(flow):
        first = flow.send(Event(name="t/dedup", id="evt-1", data={"n": 1}))
        again = flow.send(
            [Event(name="t/dedup", id="evt-1", data={"n": 2}), Event(name="t/dedup", id="EVT-1")]
        )
        assert first == ["evt-1"] and again == ["evt-1", "EVT-1"]
        run = wait_for_run(flow, event_id="evt-1")
        wait_for_run(flow, event_id="EVT-1")

    assert run.output == {"n": 1}
    assert len(flow.list_runs(event_id="evt-1")) == 1
    assert len(flow.list_runs(function_id="once")) == 2  # ids are case-sensitive


def test_duplicate_deliveries_execute_each_step_once(stack: Stack) -> None:
    flow = make_flow(stack)
    calls: Counter[str] = Counter()
    started = threading.Event()

    def slow() -> str:
        calls["slow"] += 1
        started.set()
        time.sleep(0.8)
        return "done"

    @flow.function(id="dupes", trigger=event("t/dupes"))
    def dupes(ctx):  # type: ignore[no-untyped-def]
        ctx.step.run("first", lambda: calls.update(["first"]))
        ctx.step.run("slow", slow)
        ctx.step.run("last", lambda: calls.update(["last"]))
        return "ok"

    with worker(flow, concurrency=4):
        [event_id] = flow.send(Event(name="t/dupes"))
        assert started.wait(15)
        run_id = flow.list_runs(event_id=event_id)[0].id
        for _ in range(6):  # the same message, delivered again while the run executes
            flow.doorbell.ring([run_id])
        run = wait_for_run(flow, run_id)
        for _ in range(3):  # and again after it finished
            flow.doorbell.ring([run_id])
        wait_for(lambda: calls["last"] >= 1, what="last step")
        time.sleep(0.5)  # give the late duplicates a chance to (wrongly) run something

    assert run.status == RunStatus.COMPLETED
    assert calls == {"first": 1, "slow": 1, "last": 1}
    assert flow.get_run(run_id).status == RunStatus.COMPLETED


def test_non_json_result_is_a_clear_non_retriable_error(stack: Stack) -> None:
    flow = make_flow(stack)
    calls: Counter[str] = Counter()

    @flow.function(id="nonjson", trigger=event("t/nonjson"), retries=3)
    def nonjson(ctx):  # type: ignore[no-untyped-def]
        return ctx.step.run("tags", lambda: calls.update(["tags"]) or {"a", "b"})

    with worker(flow):
        [event_id] = flow.send(Event(name="t/nonjson"))
        run = wait_for_run(flow, event_id=event_id)

    assert run.status == RunStatus.FAILED
    assert calls == {"tags": 1}
    assert run.error is not None
    message = run.error["message"]
    assert "'tags'" in message and "'set'" in message and "JSON" in message


def test_cancel_a_sleeping_run(stack: Stack) -> None:
    flow = make_flow(stack)
    calls: Counter[str] = Counter()

    @flow.function(id="sleeper", trigger=event("t/sleeper"))
    def sleeper(ctx):  # type: ignore[no-untyped-def]
        ctx.step.run("before", lambda: calls.update(["before"]))
        ctx.step.sleep("nap", timedelta(hours=1))
        ctx.step.run("after", lambda: calls.update(["after"]))

    with worker(flow):
        [event_id] = flow.send(Event(name="t/sleeper"))
        run = wait_for_run(flow, event_id=event_id, status="sleeping")
        assert flow.cancel(run.id) is True
        cancelled = flow.get_run(run.id)
        assert cancelled.status == RunStatus.CANCELLED
        flow.doorbell.ring([run.id])  # a late doorbell must not resume it
        time.sleep(0.5)
        assert flow.cancel(run.id) is False

    final = flow.get_run(run.id)
    assert final.status == RunStatus.CANCELLED and final.ended_at is not None
    assert calls == {"before": 1}


def test_cancel_a_running_run_stops_at_its_next_step(stack: Stack) -> None:
    flow = make_flow(stack)
    calls: Counter[str] = Counter()
    inside = threading.Event()
    release = threading.Event()

    def long_step() -> str:
        inside.set()
        assert release.wait(15)
        return "finished"

    @flow.function(id="busy", trigger=event("t/busy"))
    def busy(ctx):  # type: ignore[no-untyped-def]
        ctx.step.run("long", long_step)
        ctx.step.run("next", lambda: calls.update(["next"]))

    with worker(flow):
        [event_id] = flow.send(Event(name="t/busy"))
        assert inside.wait(15)
        run_id = flow.list_runs(event_id=event_id)[0].id
        assert flow.cancel(run_id) is True
        release.set()
        wait_for(lambda: flow.get_run(run_id).steps == [] or True, what="settle")
        time.sleep(0.5)

    assert flow.get_run(run_id).status == RunStatus.CANCELLED
    assert calls == {}


def test_async_functions_and_async_steps(stack: Stack) -> None:
    flow = make_flow(stack)

    async def fetch(n: int) -> int:
        return n * 2

    @flow.function(id="async-fn", trigger=event("t/async"))
    async def async_fn(ctx):  # type: ignore[no-untyped-def]
        doubled = await ctx.step.run("fetch", fetch, ctx.event.data["n"])
        await ctx.step.sleep("pause", "200ms")
        plus = await ctx.step.run("plus", lambda: doubled + 1)
        return {"result": plus}

    with worker(flow):
        [event_id] = flow.send(Event(name="t/async", data={"n": 20}))
        run = wait_for_run(flow, event_id=event_id)

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"result": 41}


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
def test_triggers_wildcards_filters_and_repeated_step_ids(stack: Stack) -> None:
    flow = make_flow(stack)

    @flow.function(id="paid-only", trigger=event("user/signed_up", if_="event.data.plan != 'test'"))
    def paid_only(ctx):  # type: ignore[no-untyped-def]
        return [ctx.step.run("item", lambda i=i: i * i) for i in range(3)]

    @flow.function(id="all-user-events", trigger=[event("user/*")])
    def all_user_events(ctx):  # type: ignore[no-untyped-def]
        return ctx.event.name

    with worker(flow):
        [paid] = flow.send({"name": "user/signed_up", "data": {"plan": "pro"}})
        [test_plan] = flow.send({"name": "user/signed_up", "data": {"plan": "test"}})
        [other] = flow.send({"name": "user/deleted"})
        for eid in (paid, test_plan, other):
            wait_for(
                lambda eid=eid: (
                    all(r.status.value == "completed" for r in flow.list_runs(event_id=eid))
                    and flow.list_runs(event_id=eid)
                ),
                what=f"runs of {eid}",
            )

    assert sorted(r.function_id for r in flow.list_runs(event_id=paid)) == [
        "all-user-events",
        "paid-only",
    ]
    assert [r.function_id for r in flow.list_runs(event_id=test_plan)] == ["all-user-events"]
    assert [r.function_id for r in flow.list_runs(event_id=other)] == ["all-user-events"]
    squares = flow.get_run(
        next(r.id for r in flow.list_runs(event_id=paid) if r.function_id == "paid-only")
    )
    assert squares.output == [0, 1, 4]
    assert [s.id for s in squares.steps] == ["item", "item:1", "item:2"]


@pytest.mark.parametrize("stack", ["embedded", "redis-postgres"], indirect=True)
def test_long_sleep_is_woken_by_the_reconciler_not_an_eta_message(stack: Stack) -> None:
    # Beyond eta_horizon no ETA message is sent (it would outlive Redis' visibility
    # timeout / RabbitMQ's consumer_timeout for real-world lengths); the stored
    # deadline and the reconciler wake it.
    flow = make_flow(stack, eta_horizon="1s", reconcile_interval="500ms")
    rang: list[tuple[str, object]] = []
    original = flow.doorbell.ring

    def spy(run_ids, eta=None, **names):  # type: ignore[no-untyped-def]
        rang.extend((rid, eta) for rid in run_ids)
        original(run_ids, eta=eta, **names)

    flow.doorbell.ring = spy  # type: ignore[method-assign]

    @flow.function(id="long-sleep", trigger=event("t/long-sleep"))
    def long_sleep(ctx):  # type: ignore[no-untyped-def]
        ctx.step.sleep("nap", "3s")
        return "awake"

    with worker(flow):
        [event_id] = flow.send(Event(name="t/long-sleep"))
        run = wait_for_run(flow, event_id=event_id, timeout=20)

    assert run.status == RunStatus.COMPLETED
    nap = run.steps[0]
    assert nap.wake_at and run.ended_at
    assert (run.ended_at - nap.wake_at).total_seconds() < 1.5
    # the engine itself sent no ETA for the nap; only the reconciler rang with one
    assert rang[0] == (run.id, None)
    assert any(eta is not None for _, eta in rang[1:])


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
def test_replay_starts_a_new_run_from_the_same_event(stack: Stack) -> None:
    flow = make_flow(stack)

    @flow.function(id="echo", trigger=event("t/echo"))
    def echo(ctx):  # type: ignore[no-untyped-def]
        return ctx.step.run("echo", lambda: ctx.event.data)

    with worker(flow):
        [event_id] = flow.send(Event(name="t/echo", data={"x": 1}))
        first = wait_for_run(flow, event_id=event_id)
        second_id = flow.replay(first.id)
        second = wait_for_run(flow, second_id)

    assert second.id != first.id and second.event_id == event_id
    assert second.output == first.output == {"x": 1}
    assert [r.id for r in flow.list_runs(event_id=event_id)] == [second.id, first.id]


@pytest.mark.parametrize("stack", ["embedded", "redis-postgres"], indirect=True)
def test_retry_after_error_sets_the_next_try(stack: Stack) -> None:
    flow = make_flow(stack)  # retry_base is 50 ms: only RetryAfterError explains a 1 s gap
    tries: list[float] = []

    def rate_limited() -> str:
        tries.append(time.monotonic())
        if len(tries) == 1:
            raise RetryAfterError("429 from the provider", "1s")
        return "ok"

    @flow.function(id="retry-after", trigger=event("t/retry-after"))
    def retry_after(ctx):  # type: ignore[no-untyped-def]
        return ctx.step.run("call", rate_limited)

    with worker(flow):
        [event_id] = flow.send(Event(name="t/retry-after"))
        run = wait_for_run(flow, event_id=event_id, timeout=20)

    assert run.status == RunStatus.COMPLETED and run.output == "ok"
    assert len(tries) == 2
    assert 1.0 <= tries[1] - tries[0] < 2.5


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
def test_errors_outside_steps_retry_the_function_body(stack: Stack) -> None:
    flow = make_flow(stack)
    calls: Counter[str] = Counter()

    @flow.function(id="body-retry", trigger=event("t/body"), retries=2)
    def body_retry(ctx):  # type: ignore[no-untyped-def]
        ctx.step.run("once", lambda: calls.update(["once"]))
        calls["body"] += 1
        if calls["body"] < 3:
            raise RuntimeError(f"flaky body {calls['body']}")
        return {"attempt": ctx.attempt}

    @flow.function(id="body-fails", trigger=event("t/body"), retries=1)
    def body_fails(ctx):  # type: ignore[no-untyped-def]
        calls["fails"] += 1
        raise RuntimeError("always")

    with worker(flow):
        [event_id] = flow.send(Event(name="t/body"))
        wait_for(
            lambda: (
                all(
                    r.status.value in ("completed", "failed")
                    for r in flow.list_runs(event_id=event_id)
                )
                and len(flow.list_runs(event_id=event_id)) == 2
            ),
            timeout=20,
            what="both runs to end",
        )

    runs = {r.function_id: r for r in flow.list_runs(event_id=event_id)}
    assert runs["body-retry"].status == RunStatus.COMPLETED
    assert runs["body-retry"].output == {"attempt": 2}
    assert runs["body-fails"].status == RunStatus.FAILED
    assert (
        runs["body-fails"].error is not None and runs["body-fails"].error["type"] == "RuntimeError"
    )
    assert calls == {"once": 1, "body": 3, "fails": 2}


@pytest.mark.parametrize("stack", ["embedded", "redis-postgres", "rabbitmq-mariadb"], indirect=True)
def test_one_sql_transaction_per_step_in_the_steady_state(stack: Stack) -> None:
    # Every committed write on the store's engine counts, so the worker's background
    # writers must stay quiet for the whole run, however slow a loaded machine makes it:
    # the reconciler's first pass (a heartbeat write) comes one reconcile_interval after
    # the worker starts, and lease renewals every third of the lease.
    flow = make_flow(stack, reconcile_interval="1h", lease="1h")
    commits: list[int] = []
    flow.store.migrate()
    engine = flow.store.engine
    wrote: set[int] = set()
    traced = ExitStack()

    def on_execute(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
        # WITH: PostgreSQL's one-statement writes (celeryflow/store/one_statement.py)
        if statement.lstrip().split(None, 1)[0].upper() in ("INSERT", "UPDATE", "DELETE", "WITH"):
            wrote.add(id(conn))

    def on_commit(conn):  # type: ignore[no-untyped-def]
        # only transactions that wrote: reads (polling here, idle reconciler passes) don't count
        if id(conn.connection.dbapi_connection) in wrote:
            wrote.discard(id(conn.connection.dbapi_connection))
            commits.append(1)

    if engine.dialect.name == "sqlite":
        # SQLite's own trace of every statement: step rows skip SQLAlchemy's execute
        # path and transaction there (celeryflow/store/prepared.py)
        def trace(dbapi_conn):  # type: ignore[no-untyped-def]
            def statement(sql: str) -> None:
                if sql.lstrip().upper().startswith("COMMIT"):
                    if id(dbapi_conn) in wrote:
                        wrote.discard(id(dbapi_conn))
                        commits.append(1)
                else:
                    on_execute(dbapi_conn, None, sql)

            return statement

        sa_event.listen(
            engine,
            "checkout",
            lambda dbapi_conn, *a: dbapi_conn.set_trace_callback(trace(dbapi_conn)),
        )
    elif engine.dialect.name == "postgresql":
        # the claim, lone step writes and the usual finish go on psycopg's cursor in
        # autocommit, each its own commit (celeryflow/store/prepared.py)
        def on_statement(sql: str, autocommit: bool, dbapi_conn: int) -> None:
            if sql.split(None, 1)[0].upper() in ("INSERT", "UPDATE", "DELETE", "WITH"):
                if autocommit:
                    commits.append(1)
                else:
                    wrote.add(dbapi_conn)

        traced.enter_context(pg_statements(engine, on_statement))
        sa_event.listen(engine, "commit", on_commit)
    else:
        sa_event.listen(
            engine,
            "before_cursor_execute",
            lambda c, cur, st, *a: on_execute(c.connection.dbapi_connection, cur, st),
        )
        sa_event.listen(engine, "commit", on_commit)

    @flow.function(id="twenty", trigger=event("t/twenty"))
    def twenty(ctx):  # type: ignore[no-untyped-def]
        return sum(ctx.step.run("s", lambda i=i: i) for i in range(20))

    with traced, worker(flow):
        [event_id] = flow.send(Event(name="t/twenty"))
        run = wait_for_run(flow, event_id=event_id)
        writes = len(commits)

    assert run.status == RunStatus.COMPLETED and run.output == sum(range(20))
    # the send, the claim, then one per step (the last one together with the finish)
    assert writes == 1 + 1 + 20, writes


def _fast_path_flow(stack: Stack) -> Flow:
    """A flow whose worker writes only what a run makes (no reconciler pass, no lease
    renewal), on a store with its fast paths on."""
    flow = make_flow(stack, reconcile_interval="1h", lease="1h")
    flow.store.migrate()
    if not flow.store.capabilities.one_statement_writes:
        pytest.skip("the store's fast paths are off (tests/test_general_path.py's rerun)")
    return flow


@contextmanager
def _pg_writes(flow: Flow) -> Iterator[list[tuple[str, bool]]]:
    """The writes sent on the store's PostgreSQL connections meanwhile, each with
    whether its connection was in autocommit."""
    written: list[tuple[str, bool]] = []

    def on_statement(sql: str, autocommit: bool, _conn: int) -> None:
        if sql.split(None, 1)[0].upper() in ("INSERT", "UPDATE", "DELETE", "WITH"):
            written.append((sql, autocommit))

    with pg_statements(flow.store.engine, on_statement):
        yield written


@pytest.mark.parametrize("stack", ["redis-postgres"], indirect=True)
def test_a_sleep_parks_in_one_statement_on_postgresql(stack: Stack) -> None:
    # The sleep's step row and the run's move to sleeping are one self-fencing
    # statement in autocommit (store/one_statement.py), as the usual finish is: a
    # transaction would cost BEGIN, two statements and COMMIT, and on a loaded worker
    # that held 200 sleepers of 2 s past 2.5 s (bench/peers.py --only sleepers).
    flow = _fast_path_flow(stack)

    @flow.function(id="napper", trigger=event("t/napper"))
    def napper(ctx):  # type: ignore[no-untyped-def]
        ctx.step.sleep("nap", 0.2)
        return ctx.step.run("after", lambda: "awake")

    with _pg_writes(flow) as written, worker(flow):
        [event_id] = flow.send(Event(name="t/napper"))
        run = wait_for_run(flow, event_id=event_id)

    assert run.status == RunStatus.COMPLETED and run.output == "awake"
    assert [s.id for s in run.steps] == ["nap", "after"]
    # the send, the claim, the park, the claim at the wake, the sleep's completion
    # (written before the next step works), the finish with its step: each by itself
    assert len(written) == 6, written
    assert all(autocommit for _, autocommit in written), written
    park = written[2][0]
    assert park.startswith("WITH ended AS (UPDATE cf_runs") and "INSERT INTO cf_steps" in park


@pytest.mark.parametrize("stack", ["redis-postgres"], indirect=True)
def test_a_resumed_waiter_ends_in_one_statement_on_postgresql(stack: Stack) -> None:
    # The event that resumes a waiter completes its step, so the run ends with nothing
    # left to write but its own row: one fenced UPDATE in autocommit, not a transaction
    # (BEGIN, the UPDATE, COMMIT) on the path bench/peers.py times against DBOS's recv.
    flow = _fast_path_flow(stack)

    @flow.function(id="awaiting", trigger=event("t/awaiting"))
    def awaiting(ctx):  # type: ignore[no-untyped-def]
        got = ctx.step.wait_for_event("go", event="t/go", match="data.k", timeout="1m")
        return got.data["v"] if got else None

    with _pg_writes(flow) as written, worker(flow):
        [event_id] = flow.send(Event(name="t/awaiting", data={"k": 1}))
        wait_for(lambda: flow.list_runs(function_id="awaiting", status="waiting"), what="waiting")
        ended_from = len(written)
        flow.send(Event(name="t/go", data={"k": 1, "v": "went"}))
        run = wait_for_run(flow, event_id=event_id)

    assert (run.status, run.output) == (RunStatus.COMPLETED, "went")
    finish = written[-1]
    assert finish[1] and finish[0].startswith("UPDATE cf_runs SET status="), written[ended_from:]
    assert "cf_steps" not in finish[0], finish


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
def test_a_bad_sleep_fails_at_once_and_attempt_is_the_bodys_after_a_retried_step(
    stack: Stack,
) -> None:
    flow = make_flow(stack)
    seen: list[int] = []
    tries: Counter[str] = Counter()

    def flaky() -> str:
        tries["flaky"] += 1
        if tries["flaky"] < 3:
            raise ConnectionError("not yet")
        return "ok"

    @flow.function(id="attempts", trigger=event("t/attempts"))
    def attempts(ctx):  # type: ignore[no-untyped-def]
        ctx.step.run("flaky", flaky)
        seen.append(ctx.attempt)
        return "done"

    @flow.function(id="bad-sleep", trigger=event("t/bad-sleep"), retries=3)
    def bad_sleep(ctx):  # type: ignore[no-untyped-def]
        ctx.step.sleep("nap", "soon")

    with worker(flow):
        [a] = flow.send(Event(name="t/attempts"))
        [b] = flow.send(Event(name="t/bad-sleep"))
        ok = wait_for_run(flow, event_id=a, timeout=30)
        bad = wait_for_run(flow, event_id=b, timeout=30)

    assert ok.status == RunStatus.COMPLETED and seen[-1] == 0  # not the step's 2
    assert bad.status == RunStatus.FAILED and bad.attempt == 0  # no retry of a typo
    assert bad.error is not None and "step.sleep('nap')" in bad.error["message"]
