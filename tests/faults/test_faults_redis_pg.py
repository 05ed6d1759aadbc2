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
from conftest import RedisPostgres
from five_app import EVENT, FUNCTION, build
from harness import Report, Scenario, assert_targets, runs_for
from instances import BlackHoleProxy

from celeryflow import Event

LEASE, RECONCILE, REDELIVER = 5.0, 1.0, 30.0
RESUME_TARGET = LEASE + RECONCILE + 10  # the recovery target after kill -9
EARLY_RING = (
    "new bug (reported by faults): the reconciler's look-ahead rings a running run up "
    "to 2 x reconcile_interval before its lease lapses; the claim is refused and the "
    "next ring comes redeliver_after (30 s) later"
)

full = pytest.mark.faults_full


def scenario(name: str, rp: RedisPostgres, tmp_path: Path, short: int, **kw: object) -> Scenario:
    return Scenario(
        name, "redis+postgres", rp.broker_url, rp.store_url, tmp_path, runs_for(short),
        lease=f"{LEASE:g}s", reconcile=f"{RECONCILE:g}s", **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def check_resume(rep: Report) -> None:
    """The kill -9 recovery target, separate from the safety targets: a miss is the
    known early-ring bug, not a lost run."""
    assert rep.resume_s is not None, rep.line()
    if rep.resume_s > RESUME_TARGET:
        pytest.xfail(f"resumed after {rep.resume_s} s > {RESUME_TARGET} s: {EARLY_RING}")


def test_kill_9_of_workers_under_load(redis_pg: RedisPostgres, tmp_path: Path) -> None:
    with scenario("kill -9 workers", redis_pg, tmp_path, 30) as sc:
        sc.worker(), sc.worker()
        sc.send()
        kills = 5 if sc.runs >= 100 else 1
        for k in range(kills):
            sc.wait_progress((k + 1) / (kills + 2))
            victim = sc.live_workers()[0]
            sc.fault()
            victim.kill9()
            sc.worker()  # its replacement
        rep = sc.finish()
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


@pytest.mark.xfail(strict=False, reason="fixed on branch retries-infra (issue 12 item 1)")
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
        sc.send()
        run_ids = [r.id for r in sc.flow.list_runs(function_id=FUNCTION, limit=10**6)]
        assert len(run_ids) == sc.runs
        sc.fault()
        run_task = sc.app.tasks["celeryflow.run"]
        with sc.app.producer_or_acquire() as producer:
            for run_id in run_ids:
                for _ in range(10):
                    run_task.apply_async((run_id,), producer=producer)
        sc.worker(), sc.worker()  # 11 messages per run wait for them
        rep = sc.finish()
    assert rep.extra_bodies == 0, rep.line()  # no fault interrupts a body here
    assert_targets(rep)


@full
def test_all_workers_down_while_runs_sleep(redis_pg: RedisPostgres, tmp_path: Path) -> None:
    nap = 5.0
    with scenario("all workers down while runs sleep", redis_pg, tmp_path, 30) as sc:
        sc.worker(), sc.worker()
        sc.send(nap=f"{nap:g}s")
        sc.wait_status("sleeping", sc.runs)
        for w in sc.live_workers():
            w.kill9()
        time.sleep(nap + 5)  # the fault's length: every wake time passes with no worker
        sc.fault()  # measured from the workers' return
        sc.worker(), sc.worker()
        rep = sc.finish()
    assert_targets(rep)


@full
def test_worker_frozen_past_its_lease(redis_pg: RedisPostgres, tmp_path: Path) -> None:
    # Long enough for another worker to take the frozen worker's runs over: the lease,
    # then (because of the early-ring bug) the second ring, redeliver_after later.
    frozen_for = LEASE + REDELIVER + 5
    with scenario("worker frozen past its lease", redis_pg, tmp_path, 30, step_seconds=0.2) as sc:
        sc.worker(), sc.worker()
        sc.send()
        sc.wait_progress(0.2)
        victim = sc.live_workers()[0]
        sc.fault()
        victim.signal(19)  # SIGSTOP: the worker and its pool children, lease thread too
        time.sleep(frozen_for)  # the fault's length
        victim.signal(18)  # SIGCONT: the stale executor wakes up and must write nothing
        rep = sc.finish()
    assert_targets(rep)
    assert rep.resume_s is not None and rep.resume_s < frozen_for, rep.line()  # taken over


@full
@pytest.mark.xfail(strict=False, reason="fixed on branch setup-cli (issue 12 item 6)")
def test_database_that_accepts_connections_and_never_answers(
    redis_pg: RedisPostgres, tmp_path: Path
) -> None:
    with BlackHoleProxy(redis_pg.pg.port) as proxy:
        via_proxy = redis_pg.pg.url(redis_pg.store_url.rsplit("/", 1)[1], port=proxy.port)
        with scenario("database black hole", redis_pg, tmp_path, 30, worker_store=via_proxy) as sc:
            _, probe = build(
                redis_pg.broker_url, via_proxy, sc.queue + "-probe", str(tmp_path / "probe")
            )
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
            sender.start()
            sender.join(30)
            time.sleep(max(0.0, 10 - (time.time() - sc.faults[-1])))  # 10 s of black hole
            proxy.heal()  # new connections work again; the ones in the hole never will
            rep = sc.finish(timeout=120 + sc.runs * 0.5)
        assert outcome and outcome[0] is not None, "send() hung on a silent database"
    assert_targets(rep)
