"""Deploys are safe, the invoke and time-limit side: migrating the legacy task
behind ``step.invoke(task=...)`` to a
flow function (``invoke(function=...)``) under the same step id, or back, does not
fail the runs in flight; and ``Flow(run_time_limit=...)`` gives ``celeryflow.run`` a
time limit of its own. Two releases of the code are two Flows on one store and one
broker, executed by real workers one after the other."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from celery import Celery
from services import Stack, unique_name

from celeryflow import ConfigError, Event, Flow, NondeterminismError, RunStatus, event
from celeryflow.durations import parse_duration
from celeryflow.tasks import run_time_limits
from celeryflow.testing import wait_for_run, worker

pytestmark = pytest.mark.parametrize("stack", ["embedded"], indirect=True)

FAST = {"retry_base": "50ms", "reconcile_interval": "1s", "redeliver_after": "5s"}
LEGACY_QUEUE = "legacy"  # where the release-1 worker does not listen
APPS = Path(__file__).parent / "apps"


def release(stack: Stack, **settings: object) -> Flow:
    app = Celery(unique_name("t-deploy"), broker=stack.broker_url)
    app.conf.task_default_queue = stack.queue
    app.conf.worker_hijack_root_logger = False
    app.conf.task_routes = {"shop.tasks.charge": {"queue": LEGACY_QUEUE}}
    return Flow(app, store=stack.store_url, auto_migrate=True, **{**FAST, **settings})


def legacy_charge(app: Celery) -> object:
    @app.task(name="shop.tasks.charge", shared=False)
    def charge(amount: int) -> dict[str, object]:
        return {"charged": amount, "by": "task"}

    return charge


def test_a_run_waiting_on_a_task_resumes_after_the_step_invokes_a_function(
    stack: Stack,
) -> None:
    # release 1: the step invokes the legacy task; the run parks waiting for it
    old = release(stack)
    charge_task = legacy_charge(old.app)

    @old.function(id="order", trigger=event("order/placed"))
    def order_v1(ctx):  # type: ignore[no-untyped-def]
        receipt = ctx.step.invoke("charge", task=charge_task, kwargs={"amount": 5})
        return {"receipt": receipt}

    with worker(old):  # listens on the flow queue only: the task waits in its queue
        [eid] = old.send(Event(name="order/placed", data={"amount": 5}))
        parked = wait_for_run(old, event_id=eid, status="waiting", timeout=30)
    assert [(s.id, s.kind) for s in parked.steps] == [("charge", "task")]

    # release 2: the task became a flow function; the same step id invokes it
    new = release(stack)
    legacy_charge(new.app)  # the task's message still in its queue is served as before

    @new.function(id="charge")
    def charge_fn(ctx):  # type: ignore[no-untyped-def]
        return {"charged": ctx.event.data["amount"], "by": "function"}

    @new.function(id="order", trigger=event("order/placed"))
    def order_v2(ctx):  # type: ignore[no-untyped-def]
        receipt = ctx.step.invoke("charge", function=charge_fn, data={"amount": 5})
        return {"receipt": receipt}

    with worker(new, queues=[stack.queue, LEGACY_QUEUE]):
        run = wait_for_run(new, parked.id, timeout=60)
        [eid2] = new.send(Event(name="order/placed", data={"amount": 7}))
        later = wait_for_run(new, event_id=eid2, timeout=60)

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"receipt": {"charged": 5, "by": "task"}}  # the recorded outcome
    assert later.status == RunStatus.COMPLETED, later.error
    assert later.output == {"receipt": {"charged": 5, "by": "function"}}
    assert [s.kind for s in later.steps] == ["invoke"]


def test_a_run_waiting_on_a_function_resumes_after_the_step_invokes_a_task(
    stack: Stack,
) -> None:
    old = release(stack)

    @old.function(id="charge")
    def charge_v1(ctx):  # type: ignore[no-untyped-def]
        ctx.step.sleep("settle", "6s")  # the child is still out when release 2 comes
        return {"charged": ctx.event.data["amount"], "by": "function"}

    @old.function(id="order", trigger=event("order/placed"))
    def order_v1(ctx):  # type: ignore[no-untyped-def]
        return ctx.step.invoke("charge", function=charge_v1, data={"amount": 3})

    with worker(old):
        [eid] = old.send(Event(name="order/placed"))
        parked = wait_for_run(old, event_id=eid, status="waiting", timeout=30)
    assert [(s.id, s.kind) for s in parked.steps] == [("charge", "invoke")]
    assert old.get_run(parked.id).status == RunStatus.WAITING  # release 1 is gone

    new = release(stack)
    charge_task = legacy_charge(new.app)

    @new.function(id="charge")
    def charge_v2(ctx):  # type: ignore[no-untyped-def]
        ctx.step.sleep("settle", "6s")
        return {"charged": ctx.event.data["amount"], "by": "function"}

    @new.function(id="order", trigger=event("order/placed"))
    def order_v2(ctx):  # type: ignore[no-untyped-def]
        return ctx.step.invoke("charge", task=charge_task, kwargs={"amount": 3})

    with worker(new, queues=[stack.queue, LEGACY_QUEUE]):
        run = wait_for_run(new, parked.id, timeout=60)

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"charged": 3, "by": "function"}


def test_other_kind_changes_still_fail_as_nondeterministic(stack: Stack) -> None:
    old = release(stack)

    @old.function(id="order", trigger=event("order/placed"), retries=0)
    def order_v1(ctx):  # type: ignore[no-untyped-def]
        ctx.step.sleep("charge", "6s")

    with worker(old):
        [eid] = old.send(Event(name="order/placed"))
        parked = wait_for_run(old, event_id=eid, status="sleeping", timeout=30)
    assert old.get_run(parked.id).status == RunStatus.SLEEPING  # release 1 is gone

    new = release(stack)
    charge_task = legacy_charge(new.app)

    @new.function(id="order", trigger=event("order/placed"), retries=0)
    def order_v2(ctx):  # type: ignore[no-untyped-def]
        return ctx.step.invoke("charge", task=charge_task, kwargs={"amount": 3})

    with worker(new):
        run = wait_for_run(new, parked.id, timeout=60)

    assert run.status == RunStatus.FAILED
    assert run.error is not None
    assert run.error["type"] == NondeterminismError.__name__
    assert "recorded as a 'sleep' step" in run.error["message"]


@contextmanager
def prefork_worker(stack: Stack, log: Path, run_time_limit: str) -> Iterator[None]:
    env = {
        **os.environ,
        "PYTHONPATH": f"{APPS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "CF_BROKER": stack.broker_url,
        "CF_STORE": stack.store_url,
        "CF_QUEUE": stack.queue,
        "CF_RUN_TIME_LIMIT": run_time_limit,
    }
    command = [sys.executable, "-m", "celery", "-A", "timelimit_app", "worker"]
    command += ["--pool", "prefork", "-c", "1", "--without-mingle", "--without-gossip"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_run_time_limit_frees_runs_from_the_app_wide_task_limit(
    stack: Stack, tmp_path: Path
) -> None:
    """The app's own tasks are limited to 1 s (soft) / 2 s (hard); a run whose step
    takes 3 s completes under Flow(run_time_limit="1m") on a prefork worker."""
    flow = release(stack)  # the sending side; the worker loads tests/apps/timelimit_app.py

    @flow.function(id="long", trigger=event("t/long"), retries=0)
    def long(ctx):  # type: ignore[no-untyped-def]
        return None

    assert run_time_limits(parse_duration("1m")) == {"time_limit": 60.0, "soft_time_limit": 54.0}
    log = tmp_path / "worker.log"
    with prefork_worker(stack, log, "1m"):
        [eid] = flow.send(Event(name="t/long"))
        run = wait_for_run(flow, event_id=eid, timeout=60)
    assert run.status == RunStatus.COMPLETED, (run.error, log.read_text()[-3000:])
    assert run.output == "done"


def test_without_run_time_limit_the_app_wide_limit_applies(stack: Stack) -> None:
    flow = release(stack)
    flow.app.conf.task_time_limit = 60
    flow.app.finalize()
    assert flow.app.tasks["celeryflow.run"].time_limit == 60  # documented in README
    limited = release(stack, run_time_limit="2h")
    limited.app.conf.task_time_limit = 60
    limited.app.finalize()
    task = limited.app.tasks["celeryflow.run"]
    assert (task.time_limit, task.soft_time_limit) == (7200, 7170)
    with pytest.raises(ConfigError, match="run_time_limit"):
        release(stack, run_time_limit="soon")
