"""Store and broker errors are infrastructure: they never count as an attempt of the
user's code. A run whose store connection drops is retried later and resumes from
its memo; a user's own database error stays the user's error."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from celery import Celery
from services import embedded_broker_url, unique_name
from tcpproxy import TcpProxy, tcp_proxy

from celeryflow import Event, Flow, Run, RunStatus, event
from celeryflow.durations import utcnow
from celeryflow.leases import LeaseKeeper
from celeryflow.runs import TERMINAL
from celeryflow.testing import wait_for, worker

FAST = {"retry_base": "50ms", "reconcile_interval": "1s", "redeliver_after": "3s", "lease": "3s"}


def flow_on(store_url: str, tmp_path: Path, **settings: Any) -> Flow:
    app = Celery(unique_name("t-infra"), broker=embedded_broker_url(tmp_path))
    app.conf.task_default_queue = unique_name("cf-test")
    app.conf.worker_hijack_root_logger = False
    return Flow(app, store=store_url, auto_migrate=True, **{**FAST, **settings})


def terminate_store_connections(store_url: str) -> int:
    """pg_terminate_backend on every other connection to the test's own database
    (the worker's held connection and its pool), from a separate connection."""
    url = sa.make_url(store_url)
    with psycopg.connect(
        host=url.host, port=url.port, user=url.username, dbname=url.database, autocommit=True
    ) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return len(rows)


@pytest.fixture
def proxy(postgres_store_url: str) -> Iterator[TcpProxy]:
    url = sa.make_url(postgres_store_url)
    with tcp_proxy((str(url.host), int(url.port or 5432))) as p:
        yield p


def through(proxy: TcpProxy, store_url: str) -> str:
    url = sa.make_url(store_url).set(host="127.0.0.1", port=proxy.port)
    return url.render_as_string(hide_password=False)


def cut_for(proxy: TcpProxy, seconds: float) -> None:
    proxy.cut()
    threading.Timer(seconds, proxy.restore).start()


def ended(flow: Flow, event_id: str, timeout: float = 60) -> Run:
    """wait_for_run, through connections the test's own terminations may have dropped
    (the test shares the worker's pool: one read may meet a dead connection)."""

    def probe() -> Run | None:
        try:
            runs = flow.list_runs(event_id=event_id, limit=1)
            run = flow.get_run(runs[0].id) if runs else None
        except sa.exc.OperationalError:
            return None
        return run if run is not None and run.status in TERMINAL else None

    return wait_for(probe, timeout=timeout, what=f"the run of {event_id} to end")


def count_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.parametrize("body", ["sync", "async"])
def test_dropped_store_connection_is_not_the_users_failure(
    postgres_store_url: str, tmp_path: Path, body: str
) -> None:
    flow = flow_on(postgres_store_url, tmp_path)
    journal = tmp_path / "journal.txt"

    def work() -> str:
        with journal.open("a") as out:
            out.write("ran\n")
        assert terminate_store_connections(postgres_store_url) >= 1
        return "done"

    if body == "sync":

        @flow.function(id="drop", trigger=event("t/drop"), retries=0)
        def drop(ctx):  # type: ignore[no-untyped-def]
            first = ctx.step.run("work", work)
            second = ctx.step.run("after", lambda: "after")
            return [first, second]

    else:

        @flow.function(id="drop", trigger=event("t/drop"), retries=0)
        async def drop_async(ctx):  # type: ignore[no-untyped-def]
            first = await ctx.step.run("work", work)
            second = await ctx.step.run("after", lambda: "after")
            return [first, second]

    with worker(flow):
        [event_id] = flow.send(Event(name="t/drop", data={}))
        run = ended(flow, event_id)

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == ["done", "after"]
    assert [s.id for s in run.steps] == ["work", "after"]
    assert [s.attempts for s in run.steps] == [1, 1]
    assert run.attempt == 0
    assert count_lines(journal) == 1


def test_store_down_at_the_last_write_leaves_the_run_for_later(
    postgres_store_url: str, tmp_path: Path
) -> None:
    """The function's end is the write that fails: with retries=0 the run is not failed
    for good; it completes (from its memo) once the store answers."""
    flow = flow_on(postgres_store_url, tmp_path)
    journal = tmp_path / "journal.txt"

    @flow.function(id="last", trigger=event("t/last"), retries=0)
    def last(ctx):  # type: ignore[no-untyped-def]
        ctx.step.run("first", lambda: "one")

        def work() -> str:
            with journal.open("a") as out:
                out.write("ran\n")
            terminate_store_connections(postgres_store_url)
            return "two"

        return ctx.step.run("work", work)

    with worker(flow):
        [event_id] = flow.send(Event(name="t/last", data={}))
        run = ended(flow, event_id)

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == "two"
    assert [s.id for s in run.steps] == ["first", "work"]
    assert count_lines(journal) == 1


def test_users_own_database_error_is_the_users_failure(
    postgres_store_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An OperationalError raised by the step body (the user's database, here one that
    does not exist) is an ordinary failure: retried, then the run fails with its type."""
    flow = flow_on(postgres_store_url, tmp_path)
    store = sa.make_url(postgres_store_url)
    url = store.set(database=f"{store.database}_missing")
    users_db = sa.create_engine(url, poolclass=sa.pool.NullPool)
    tries = tmp_path / "tries.txt"

    def query() -> int:
        with tries.open("a") as out:
            out.write("try\n")
        with users_db.connect() as conn:
            return int(conn.execute(sa.text("SELECT 1")).scalar_one())

    @flow.function(id="own-db", trigger=event("t/own-db"), retries=1)
    def own_db(ctx):  # type: ignore[no-untyped-def]
        return ctx.step.run("query", query)

    with caplog.at_level(logging.WARNING), worker(flow):
        [event_id] = flow.send(Event(name="t/own-db", data={}))
        run = ended(flow, event_id)

    assert run.status == RunStatus.FAILED
    assert run.error is not None
    assert run.error["type"] == "OperationalError"
    assert count_lines(tries) == 2


def test_store_down_for_a_moment_costs_the_run_nothing(
    postgres_store_url: str, proxy: TcpProxy, tmp_path: Path
) -> None:
    """The database is unreachable (connections cut, new ones refused) for 1 s while a
    step works: the step's result is written once it is back, within half a lease."""
    flow = flow_on(through(proxy, postgres_store_url), tmp_path, lease="8s")
    journal = tmp_path / "journal.txt"

    def work() -> str:
        with journal.open("a") as out:
            out.write("ran\n")
        cut_for(proxy, 1.0)
        return "done"

    @flow.function(id="blip", trigger=event("t/blip"), retries=0)
    def blip(ctx):  # type: ignore[no-untyped-def]
        ctx.step.run("work", work)
        return ctx.step.run("after", lambda: "after")

    with worker(flow):
        [event_id] = flow.send(Event(name="t/blip", data={}))
        run = ended(flow, event_id)

    assert run.status == RunStatus.COMPLETED, run.error
    assert [(s.id, s.attempts) for s in run.steps] == [("work", 1), ("after", 1)]
    assert run.attempt == 0
    assert count_lines(journal) == 1


def test_store_back_before_the_release_keeps_the_steps_result(
    postgres_store_url: str, proxy: TcpProxy, tmp_path: Path
) -> None:
    """Down longer than the engine's patience (half a lease, 3 s here) and shorter than
    the lease: the write of the step's result gives up, and the run is released as
    soon as the store answers, with that result, so the step does not run again. The
    margins are 1.5 s either side so a loaded machine does not cross them."""
    flow = flow_on(through(proxy, postgres_store_url), tmp_path, lease="6s")
    journal = tmp_path / "journal.txt"

    def work() -> str:
        with journal.open("a") as out:
            out.write("ran\n")
        if count_lines(journal) == 1:
            cut_for(proxy, 4.5)
        return "done"

    @flow.function(id="release", trigger=event("t/release"), retries=0)
    def release(ctx):  # type: ignore[no-untyped-def]
        ctx.step.run("work", work)
        try:
            return ctx.step.run("after", lambda: "after")  # its start writes "work"
        except Exception:  # the store's failure is not the user's to catch
            return "swallowed"

    with worker(flow):
        [event_id] = flow.send(Event(name="t/release", data={}))
        run = ended(flow, event_id)

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == "after"
    assert [(s.id, s.attempts) for s in run.steps] == [("work", 1), ("after", 1)]
    assert run.attempt == 0
    assert count_lines(journal) == 1


def test_store_down_longer_than_the_lease_retries_without_counting_an_attempt(
    postgres_store_url: str, proxy: TcpProxy, tmp_path: Path
) -> None:
    """Down for longer than the engine's patience (half a lease): the run leaves the
    worker and completes later, its attempt not counted. The step whose result could
    not be written runs again (steps are at-least-once); the step before it does not."""
    flow = flow_on(through(proxy, postgres_store_url), tmp_path, lease="2s")
    journal = tmp_path / "journal.txt"

    def work() -> str:
        with journal.open("a") as out:
            out.write("ran\n")
        if count_lines(journal) == 1:
            cut_for(proxy, 3.0)
        return "done"

    @flow.function(id="outage", trigger=event("t/outage"), retries=0)
    def outage(ctx):  # type: ignore[no-untyped-def]
        first = ctx.step.run("first", lambda: "first")
        ctx.step.run("work", work)
        try:
            return [first, ctx.step.run("after", lambda: "after")]
        except Exception:  # the store's failure is not the user's to catch
            return "swallowed"

    with worker(flow):
        [event_id] = flow.send(Event(name="t/outage", data={}))
        run = ended(flow, event_id)

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == ["first", "after"]
    assert [(s.id, s.attempts) for s in run.steps] == [("first", 1), ("work", 1), ("after", 1)]
    assert run.attempt == 0
    assert count_lines(journal) == 2


# -- the broker is down when a send commits -------------------------------------------


def closed_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port: int = probe.getsockname()[1]
    probe.close()
    return port


def define(flow: Flow) -> Any:
    @flow.function(id="plain", trigger=event("t/order"))
    def plain(ctx):  # type: ignore[no-untyped-def]
        return ctx.step.run("one", lambda: ctx.event.data["n"])

    @flow.function(
        id="limited",
        trigger=event("t/order"),
        concurrency={"limit": 1, "key": "event.data.customer"},
    )
    def limited(ctx):  # type: ignore[no-untyped-def]
        return ctx.step.run("one", lambda: ctx.event.data["n"] * 10)

    @flow.function(id="called", params=["n"])
    def called(ctx):  # type: ignore[no-untyped-def]
        return ctx.event.data["n"] + 1

    return called


@pytest.mark.parametrize("scheme", ["amqp", "redis"])
def test_send_with_the_broker_down_succeeds_and_the_reconciler_rings(
    tmp_path: Path, scheme: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The commit is the send: with the broker unreachable (a closed port), send()
    and delay() return promptly, one WARNING says so, and a worker on a working
    broker completes the runs through its reconciler."""
    store = f"sqlite:///{tmp_path / 'store.db'}"
    port = closed_port()
    down = Celery(
        unique_name("t-down"),
        broker=f"redis://127.0.0.1:{port}/0" if scheme == "redis" else f"amqp://127.0.0.1:{port}//",
    )
    sender = Flow(down, store=store, **FAST)
    call = define(sender)

    with caplog.at_level(logging.WARNING, logger="celeryflow.tasks"):
        started = time.monotonic()
        ids = sender.send([Event(name="t/order", data={"n": n, "customer": "c1"}) for n in (1, 2)])
        handle = call.delay(41)
        took = time.monotonic() - started
    # A bound far above a prompt return on a loaded machine, far below a send that
    # sits in kombu's connection retries (which never give up by default).
    assert took < 30, f"send and delay took {took:.1f} s with the broker down"
    warnings = [r for r in caplog.records if "broker unreachable" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    runs = [r for i in ids for r in sender.list_runs(event_id=i)]
    assert len(runs) == 4 and {r.status for r in runs} == {RunStatus.QUEUED}

    flow = flow_on(store, tmp_path)
    define(flow)
    with worker(flow):
        assert handle.get(timeout=60) == 42
        for event_id in ids:
            for run in sender.list_runs(event_id=event_id):
                done = wait_for(
                    lambda r=run: (x := flow.get_run(r.id)).status in TERMINAL and x,
                    timeout=60,
                    what=f"run {run.id} of {run.function_id}",
                )
                assert done.status == RunStatus.COMPLETED, done.error
    outputs = sorted(flow.get_run(r.id).output for r in runs)
    assert outputs == [1, 2, 10, 20]


# -- leases ---------------------------------------------------------------------------


def test_a_run_that_ends_during_lease_renewal_is_not_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The renewal finds the run no longer running: ended by its own executor (same
    fence) is not "lease lost"; cancelled (the fence moved on) is."""
    flow = flow_on(f"sqlite:///{tmp_path / 'store.db'}", tmp_path)

    @flow.function(id="held", trigger=event("t/held"))
    def held(ctx):  # type: ignore[no-untyped-def]
        return None

    keeper = LeaseKeeper(flow.store, timedelta(milliseconds=300))  # renews every 0.1 s
    ids = []
    for _ in range(2):
        [event_id] = flow.send(Event(name="t/held", data={}))
        [run] = flow.list_runs(event_id=event_id)
        now = utcnow()
        claim = flow.store.claim(run.id, "test", now, now + timedelta(seconds=30))
        assert claim is not None
        keeper.hold(run.id, claim.fence)
        ids.append((run.id, claim.fence))
    (ended_id, fence), (cancelled_id, _) = ids
    try:
        with caplog.at_level(logging.WARNING, logger="celeryflow.leases"):
            with flow.store.session() as session:
                held_, _ = session.finish(ended_id, fence, status=RunStatus.COMPLETED, now=utcnow())
                assert held_
            flow.cancel(cancelled_id)
            wait_for(
                lambda: any(cancelled_id in r.getMessage() for r in caplog.records),
                timeout=10,
                what="the cancelled run's lease lost warning",
            )
            time.sleep(0.3)  # three more renewals: the ended run stays held, unreleased
    finally:
        for run_id, _ in ids:
            keeper.release(run_id)
        keeper._wake.set()  # the renewal thread ends with the test
    lost = [r.getMessage() for r in caplog.records if "lease lost" in r.getMessage()]
    assert not [m for m in lost if ended_id in m], lost
