"""A parked run's wake-up is held by the worker process that parked it and rung when
due (celeryflow/wake_timer.py), not published at once as an ETA message the worker's
main process must hold for the whole sleep (issue 17, target 3: the sleepers). What a
process holds goes to the broker, with its ETA, when it exits cleanly, so a pool child
replaced after its tasks or a worker's warm shutdown loses no wake-up."""

from __future__ import annotations

import importlib
import signal
import sys
import time
from pathlib import Path

import pytest
import redis
from flowkit import apps_env, make_flow, worker_process
from services import Stack

from celeryflow import Event, Flow, RunStatus, event
from celeryflow.testing import wait_for, worker


def _messages_mentioning(broker_url: str, run_id: str) -> list[str]:
    """What Redis holds for ``run_id``: messages queued, or delivered and unacked (an
    ETA message a worker holds stays in kombu's ``unacked`` hash until it runs)."""
    client = redis.Redis.from_url(broker_url)
    try:
        found = [v.decode() for v in client.hvals("unacked") if run_id.encode() in v]
        for key in client.scan_iter(count=1000):
            if client.type(key) == b"list":
                found += [v.decode() for v in client.lrange(key, 0, -1) if run_id.encode() in v]
        return found
    finally:
        client.close()


@pytest.mark.parametrize("stack", ["embedded", "redis-postgres"], indirect=True)
def test_a_sleeping_run_s_wake_up_is_held_by_the_worker_not_the_broker(stack: Stack) -> None:
    flow = _napper(stack)
    with worker(flow):
        flow.send(Event(name="t/nap"))
        [run] = wait_for(
            lambda: flow.list_runs(function_id="napper", status="sleeping"),
            timeout=15,
            what="the run to park",
        )
        wait_for(lambda: flow.doorbell.wakes.held() == 1, timeout=5, what="the held wake-up")
        if stack.name == "redis-postgres":
            assert _messages_mentioning(stack.broker_url, run.id) == []
        wait_for(
            lambda: flow.get_run(run.id).status == RunStatus.COMPLETED,
            timeout=15,
            what="the held wake-up to ring (the reconciler is not needed)",
        )
        assert flow.doorbell.wakes.held() == 0
    assert flow.get_run(run.id).output == "woke"


@pytest.mark.parametrize("stack", ["rabbitmq-mariadb"], indirect=True)
def test_on_amqp_the_wake_up_rides_the_broker(stack: Stack) -> None:
    """RabbitMQ hands a dead worker's ETA messages to another at once: nothing held."""
    flow = _napper(stack)
    with worker(flow):
        flow.send(Event(name="t/nap"))
        [run] = wait_for(
            lambda: flow.list_runs(function_id="napper", status="sleeping"),
            timeout=15,
            what="the run to park",
        )
        assert flow.doorbell.wakes.held() == 0
        wait_for(
            lambda: flow.get_run(run.id).status == RunStatus.COMPLETED,
            timeout=15,
            what="the ETA doorbell to wake the run",
        )


def _napper(stack: Stack) -> Flow:
    flow = make_flow(stack)

    @flow.function(id="napper", trigger=event("t/nap"))
    def napper(ctx):  # type: ignore[no-untyped-def]
        ctx.step.sleep("nap", "3s")
        return "woke"

    return flow


def _wakes_flow(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> tuple[Flow, dict[str, str]]:
    env = {"CF_BROKER": stack.broker_url, "CF_STORE": stack.store_url, "CF_QUEUE": stack.queue}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "apps"))
    sys.modules.pop("wakes_app", None)
    flow: Flow = importlib.import_module("wakes_app").flow
    flow.store.migrate()
    return flow, apps_env(**env)


def _worker(name: str, *options: str) -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "wakes_app", "worker", "-n", f"{name}@%h",
        "--loglevel", "INFO", "--without-mingle", "--without-gossip", *options,
    ]  # fmt: skip


@pytest.mark.parametrize("stack", ["embedded", "redis-postgres"], indirect=True)
def test_a_pool_child_replaced_after_its_task_hands_its_wake_up_to_the_broker(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--max-tasks-per-child 1: the child that parked the run exits right after; the
    reconciler is a minute away and would not ring it for ten."""
    flow, env = _wakes_flow(stack, monkeypatch)
    command = _worker("replaced", "--pool", "prefork", "-c", "1", "--max-tasks-per-child", "1")
    try:
        with worker_process(command, env, Path.cwd(), tmp_path / "worker.log"):
            [run_id] = flow.send(Event(name="t/nap", data={"seconds": 3}))
            wait_for(
                lambda: flow.list_runs(event_id=run_id, status="completed"),
                timeout=60,
                what="the run to wake in a new pool child",
            )
    finally:
        sys.modules.pop("wakes_app", None)
    [run] = flow.list_runs(event_id=run_id)
    assert run.output == "woke"


@pytest.mark.parametrize("pool", ["prefork", "threads"])
@pytest.mark.parametrize("stack", ["embedded", "redis-postgres"], indirect=True)
def test_a_worker_stopped_warm_hands_its_wake_ups_to_the_next(
    stack: Stack, pool: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flow, env = _wakes_flow(stack, monkeypatch)
    try:
        first = _worker("first", "--pool", pool, "-c", "2")
        with worker_process(first, env, Path.cwd(), tmp_path / "first.log") as proc:
            event_ids = flow.send([Event(name="t/nap", data={"seconds": 8}) for _ in range(3)])
            wait_for(
                lambda: len(flow.list_runs(function_id="napper", status="sleeping")) == 3,
                timeout=30,
                what="the runs to park",
            )
            proc.send_signal(signal.SIGTERM)  # a warm shutdown, while they sleep
            proc.wait(30)
        # a slow shutdown may take one in again, as its ETA message, and finish it
        assert flow.list_runs(function_id="napper", status="sleeping")
        stopped = time.monotonic()
        second = _worker("second", "--pool", pool, "-c", "2")
        with worker_process(second, env, Path.cwd(), tmp_path / "second.log"):
            wait_for(
                lambda: len(flow.list_runs(function_id="napper", status="completed")) == 3,
                timeout=60,
                what="the next worker to wake the runs (the reconciler would take ten minutes)",
            )
        assert time.monotonic() - stopped < 60
    finally:
        sys.modules.pop("wakes_app", None)
    assert {r.event_id for r in flow.list_runs(function_id="napper")} == set(event_ids)
