"""Faults on Redis + PostgreSQL (private instances), with prefork workers (issue 12).

Each test is one scenario: real ``celery worker`` subprocesses run a 5-step function
for many runs while the fault strikes; the report (see harness.py) counts runs
completed / failed / lost, finished steps run again, and the times to recover.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from five_app import EVENT, build
from harness import Scenario, assert_targets, runs_for
from instances import BlackHoleProxy
from scenarios import (
    FROZEN_FOR,
    LEASE,
    RECONCILE,
    all_workers_down_while_sleeping,
    check_resume,
    duplicate_deliveries,
    kill_9_under_load,
    worker_frozen_past_lease,
)
from stacks import RedisPostgres

from celeryflow import Event, StoreUnavailable

full = pytest.mark.faults_full


def scenario(name: str, rp: RedisPostgres, tmp_path: Path, short: int, **kw: object) -> Scenario:
    return Scenario(
        name, "redis+postgres", rp.broker_url, rp.store_url, tmp_path, runs_for(short),
        lease=f"{LEASE:g}s", reconcile=f"{RECONCILE:g}s", **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def test_kill_9_of_workers_under_load(redis_pg: RedisPostgres, tmp_path: Path) -> None:
    with scenario("kill -9 workers", redis_pg, tmp_path, 30) as sc:
        rep = kill_9_under_load(sc)
    assert_targets(rep)
    check_resume(rep)


def test_redis_killed_and_restarted_with_its_data_lost(
    redis_pg: RedisPostgres, tmp_path: Path
) -> None:
    with scenario("redis killed, data lost", redis_pg, tmp_path, 30) as sc:
        sc.worker(), sc.worker()
        sc.send()
        sc.wait_progress(0.3)
        sc.fault()
        redis_pg.redis.kill()  # no persistence: every queued message is gone
        time.sleep(2)  # the fault's length: the broker is away for 2 s
        redis_pg.redis.start()
        rep = sc.finish()
    assert_targets(rep)


@pytest.mark.parametrize(
    "mode, down",
    [
        ("fast", 0.0),
        pytest.param("immediate", 0.0, marks=full),
        pytest.param("fast", 20.0, marks=full),
    ],
    ids=["restart-fast", "restart-immediate", "down-20s"],
)
def test_postgres_restarted(
    redis_pg: RedisPostgres, tmp_path: Path, mode: str, down: float
) -> None:
    name = f"postgres {'down 20 s' if down else 'restart ' + mode}"
    with scenario(name, redis_pg, tmp_path, 30) as sc:
        sc.worker(), sc.worker()
        sc.send()
        sc.wait_progress(0.3)
        sc.fault()
        redis_pg.pg.stop(mode)
        time.sleep(down)  # the fault's length: the database is away
        redis_pg.pg.start()
        rep = sc.finish()
    assert_targets(rep)


def test_pg_terminate_backend_on_worker_connections(
    redis_pg: RedisPostgres, tmp_path: Path
) -> None:
    database = redis_pg.store_url.rsplit("/", 1)[1]
    with scenario("pg_terminate_backend", redis_pg, tmp_path, 30) as sc:
        sc.worker(), sc.worker()
        sc.send()
        sc.wait_progress(0.2)
        sc.fault()
        killed = 0
        for _ in range(10):  # every 0.5 s for 5 s, each connection of the store
            killed += len(redis_pg.pg.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE datname = '{database}' AND pid <> pg_backend_pid()"
            ))  # fmt: skip
            time.sleep(0.5)
        sc.report.notes.append(f"{killed} backends terminated")
        rep = sc.finish()
    assert killed > 0
    assert_targets(rep)


def test_duplicate_deliveries_x10(redis_pg: RedisPostgres, tmp_path: Path) -> None:
    with scenario("duplicate deliveries x10", redis_pg, tmp_path, 30) as sc:
        rep = duplicate_deliveries(sc)
    assert rep.extra_bodies == 0, rep.line()  # no fault interrupts a body here
    assert_targets(rep)


@full
def test_all_workers_down_while_runs_sleep(redis_pg: RedisPostgres, tmp_path: Path) -> None:
    with scenario("all workers down while runs sleep", redis_pg, tmp_path, 30) as sc:
        rep = all_workers_down_while_sleeping(sc)
    assert_targets(rep)


@full
def test_worker_frozen_past_its_lease(redis_pg: RedisPostgres, tmp_path: Path) -> None:
    with scenario("worker frozen past its lease", redis_pg, tmp_path, 30, step_seconds=0.2) as sc:
        rep = worker_frozen_past_lease(sc, FROZEN_FOR)
    assert_targets(rep)
    assert rep.resume_s is not None and rep.resume_s < FROZEN_FOR, rep.line()  # taken over


# The black hole's connect and statement timeouts: short, so that the workers' stuck
# statements end well within the fault (PostgreSQL never cancels them: it hears nothing).
HOLE_TIMEOUT = 3.0
HOLE_FOR = 10.0  # the fault's length


def test_database_that_accepts_connections_and_never_answers(
    redis_pg: RedisPostgres, tmp_path: Path
) -> None:
    """Between the workers and PostgreSQL, a proxy turns into a black hole: TCP still
    accepted and acknowledged, nothing answered, the connections it held silent for
    good. Statements in flight end at the client's bound (StoreUnavailable: no attempt
    counted), new connections at the connect timeout, ``send()`` fails with one line
    instead of hanging, and once the database answers again every run completes."""
    with BlackHoleProxy(redis_pg.pg.port) as proxy:
        via_proxy = redis_pg.pg.url(redis_pg.store_url.rsplit("/", 1)[1], port=proxy.port)
        with scenario(
            "database black hole", redis_pg, tmp_path, 30, worker_store=via_proxy,
            timeout=f"{HOLE_TIMEOUT:g}s",
        ) as sc:  # fmt: skip
            _, probe = build(
                redis_pg.broker_url, via_proxy, sc.queue + "-probe", str(tmp_path / "probe"),
                timeout=f"{HOLE_TIMEOUT:g}s",
            )  # fmt: skip
            probe.list_runs()  # a pooled connection, idle in the hole when send() comes
            sc.worker(), sc.worker()
            sc.send()
            sc.wait_progress(0.3)
            sc.fault()
            proxy.black_hole()
            outcome: list[BaseException | None] = []

            def send() -> None:
                try:
                    probe.send(Event(name=EVENT))
                    outcome.append(None)
                except BaseException as exc:
                    outcome.append(exc)

            sender = threading.Thread(target=send, daemon=True)
            started = time.monotonic()
            sender.start()
            sender.join(HOLE_FOR)
            took = time.monotonic() - started
            sc.report.notes.append(
                f"send() during the black hole: {type(outcome[0]).__name__}: "
                f"{str(outcome[0])[:160]} after {took:.1f} s"
                if outcome
                else f"send() during the black hole: still hanging after {took:.0f} s"
            )
            time.sleep(max(0.0, HOLE_FOR - (time.time() - sc.faults[-1])))
            proxy.heal()  # new connections work again; the ones in the hole never will
            rep = sc.finish(timeout=90 + sc.runs * 0.2)
            probe.store.engine.dispose()
    assert outcome, "send() hung on a silent database"
    assert isinstance(outcome[0], StoreUnavailable), outcome[0]
    assert "\n" not in str(outcome[0])
    # the idle pooled connection's ping, then a new connection: each connect_timeout
    assert took < 2 * HOLE_TIMEOUT + 3, took
    assert_targets(rep)
