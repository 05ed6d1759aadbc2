"""Celery's eager mode (task_always_eager): a run executes inline up to its first park,
a park is never executed inline, and celeryflow.testing finishes what is due.

Embedded default (SQLite store, celeryflow+sqlite:// broker): no service needed."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.signals import task_postrun, task_prerun

from celeryflow import Event, Flow, event
from celeryflow.testing import run_due, sleeps_elapse, wait_for, wait_for_run, worker

DEADLINE = 60.0


@pytest.fixture
def eager_flow(tmp_path: Path, request: pytest.FixtureRequest) -> Flow:
    app = Celery(f"eager-{request.node.name}")
    app.conf.task_always_eager = True
    app.conf.worker_hijack_root_logger = False
    return Flow(app, store=f"sqlite:///{tmp_path / 'celeryflow.db'}", retry_base="200ms")


@pytest.fixture
def run_task_depth() -> Iterator[dict[str, int]]:
    """How many celeryflow.run executions were open at once, at most (1: no nesting)."""
    seen = {"now": 0, "max": 0, "total": 0}

    def pre(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "name", "") == "celeryflow.run":
            seen["now"] += 1
            seen["total"] += 1
            seen["max"] = max(seen["max"], seen["now"])

    def post(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "name", "") == "celeryflow.run":
            seen["now"] -= 1

    task_prerun.connect(pre, weak=False)
    task_postrun.connect(post, weak=False)
    yield seen
    task_prerun.disconnect(pre)
    task_postrun.disconnect(post)


def within_deadline(call: Callable[[], Any], seconds: float = DEADLINE) -> Any:
    """Call in a thread: a hang fails the test at the deadline instead of stalling."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = call()
        except BaseException as exc:
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s (hung or recursing)"
    if "error" in out:
        raise out["error"]
    return out.get("value")


def flaky_then_sleep(flow: Flow) -> dict[str, int]:
    calls = {"flaky": 0}

    def flaky() -> str:
        calls["flaky"] += 1
        if calls["flaky"] == 1:
            raise RuntimeError("the first call fails")
        return "ok"

    @flow.function(id="flaky-sleeper", trigger=event("eager/go"))
    def flaky_sleeper(ctx: Any) -> str:
        result = ctx.step.run("flaky", flaky)
        ctx.step.sleep("nap", "1s")
        return f"{result} after a nap"

    return calls


def test_send_runs_inline_to_the_first_park_and_never_recurses(
    eager_flow: Flow, run_task_depth: dict[str, int]
) -> None:
    calls = flaky_then_sleep(eager_flow)
    [event_id] = within_deadline(lambda: eager_flow.send(Event(name="eager/go")))

    # send returned with the run parked at its retry back-off: executed once, inline
    [parked] = eager_flow.list_runs(event_id=event_id)
    run = eager_flow.get_run(parked.id)
    assert run.status == "queued" and run.wake_at is not None
    assert [(s.id, s.status, s.attempts) for s in run.steps] == [("flaky", "retrying", 1)]
    assert calls["flaky"] == 1
    assert run_task_depth == {"now": 0, "max": 1, "total": 1}

    done = within_deadline(lambda: wait_for_run(eager_flow, run.id, timeout=DEADLINE))
    assert done.status == "completed", done.error
    assert done.output == "ok after a nap"
    assert [(s.id, s.status, s.attempts) for s in done.steps] == [
        ("flaky", "completed", 2),
        ("nap", "completed", 1),
    ]
    # once at send, once after the back-off, once after the nap; never nested
    assert run_task_depth["max"] == 1
    assert run_task_depth["total"] == 3


def test_run_due_executes_only_what_is_due(eager_flow: Flow) -> None:
    @eager_flow.function(id="long", trigger=event("eager/long"))
    def long(ctx: Any) -> str:
        ctx.step.sleep("week", "7 days")
        return "woke"

    @eager_flow.function(id="short", trigger=event("eager/short"))
    def short(ctx: Any) -> str:
        ctx.step.sleep("blink", "300ms")
        return "woke"

    [long_event] = eager_flow.send(Event(name="eager/long"))
    [short_event] = eager_flow.send(Event(name="eager/short"))
    [long_run] = eager_flow.list_runs(event_id=long_event)
    [short_run] = eager_flow.list_runs(event_id=short_event)
    assert long_run.status == short_run.status == "sleeping"

    assert wait_for(lambda: run_due(eager_flow), timeout=DEADLINE) == [short_run.id]
    assert eager_flow.get_run(short_run.id).status == "completed"
    assert eager_flow.get_run(long_run.id).status == "sleeping"
    assert run_due(eager_flow) == []


def test_sleeps_elapse_ends_sleeps_at_once(eager_flow: Flow) -> None:
    @eager_flow.function(id="drip", trigger=event("eager/drip"))
    def drip(ctx: Any) -> list[str]:
        ctx.step.sleep("day-3", "3 days")
        tip = ctx.step.run("tip", lambda: "tip sent")
        ctx.step.sleep_until("day-7", "2099-01-01T00:00:00Z")
        return [tip, "check-in sent"]

    started = time.monotonic()
    with sleeps_elapse(eager_flow):
        [event_id] = eager_flow.send(Event(name="eager/drip"))
    [run] = eager_flow.list_runs(event_id=event_id)
    run = eager_flow.get_run(run.id)
    assert run.status == "completed"
    assert run.output == ["tip sent", "check-in sent"]
    assert [s.status for s in run.steps] == ["completed"] * 3
    assert run.steps[2].wake_at is not None and run.steps[2].wake_at.year == 2099
    assert time.monotonic() - started < DEADLINE
    assert eager_flow.engine.sleeps_elapse is False  # restored

    [event_id] = eager_flow.send(Event(name="eager/drip"))  # outside the block: sleeps
    [run] = eager_flow.list_runs(event_id=event_id)
    assert run.status == "sleeping"


def test_children_and_legacy_tasks_resolve_inline_in_order(
    eager_flow: Flow, run_task_depth: dict[str, int]
) -> None:
    app = eager_flow.app

    @app.task(name="eager.add")
    def add(a: int, b: int) -> int:
        return a + b

    @eager_flow.function(id="child")
    def child(ctx: Any) -> int:
        return int(ctx.event.data["n"]) * 10

    @eager_flow.function(id="parent", trigger=event("eager/parent"))
    def parent(ctx: Any) -> list[int]:
        got = ctx.step.invoke("child", function=child, data={"n": 4})
        summed = ctx.step.invoke("add", task=add, args=(got, 2))
        return [got, summed]

    [event_id] = within_deadline(lambda: eager_flow.send(Event(name="eager/parent")))
    # all within send: the child runs after the parent parked for it, the parent after
    # the child ended, the legacy task after the parent parked for it
    [run] = eager_flow.list_runs(event_id=event_id)
    assert run.status == "completed", eager_flow.get_run(run.id)
    assert run.output == [40, 42]
    assert run_task_depth["max"] == 1


def test_an_event_resumes_a_waiting_run_inline(eager_flow: Flow) -> None:
    @eager_flow.function(id="await-payment", trigger=event("eager/ordered"))
    def await_payment(ctx: Any) -> Any:
        paid = ctx.step.wait_for_event("paid", event="eager/paid", match="data.order", timeout="1h")
        return paid.data["amount"] if paid else None

    [ordered] = eager_flow.send(Event(name="eager/ordered", data={"order": "o-1"}))
    [run] = eager_flow.list_runs(event_id=ordered)
    assert run.status == "waiting"
    eager_flow.send(Event(name="eager/paid", data={"order": "o-1", "amount": 5}))
    run = eager_flow.get_run(run.id)
    assert run.status == "completed" and run.output == 5


class NamespacedSettings:
    """What Django's settings module is to an app configured with
    ``config_from_object('django.conf:settings', namespace='CELERY')``."""

    CELERY_TASK_ALWAYS_EAGER = True


def test_worker_switches_eager_off_for_its_duration(tmp_path: Path) -> None:
    app = Celery("eager-worker")
    app.config_from_object(NamespacedSettings, namespace="CELERY")
    app.conf.worker_hijack_root_logger = False
    flow = Flow(app, store=f"sqlite:///{tmp_path / 'celeryflow.db'}")
    assert app.conf.task_always_eager is True
    executed_in: list[int] = []

    @flow.function(id="where", trigger=event("eager/where"))
    def where(ctx: Any) -> str:
        ctx.step.run("thread", lambda: executed_in.append(threading.get_ident()))
        return "done"

    with worker(flow):
        assert app.conf.task_always_eager is False
        assert NamespacedSettings.CELERY_TASK_ALWAYS_EAGER is False
        [event_id] = flow.send(Event(name="eager/where"))
        run = wait_for_run(flow, event_id=event_id, timeout=DEADLINE)
        assert run.status == "completed"
    assert executed_in and executed_in[0] != threading.get_ident()  # the worker ran it
    assert app.conf.task_always_eager is True
    assert NamespacedSettings.CELERY_TASK_ALWAYS_EAGER is True
