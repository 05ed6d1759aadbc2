"""Gradual migration (issue 6): legacy Celery tasks as durable steps, legacy tasks
triggered by events, old call sites of a migrated task, canvas untouched."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from celery import chain
from flowkit import make_flow
from services import Stack

from celeryflow import Event, RunFailedError, RunStatus, StepError, event
from celeryflow.testing import wait_for, wait_for_run, worker


def test_a_legacy_task_as_a_durable_step(stack: Stack) -> None:
    flow = make_flow(stack)
    app = flow.app
    calls: Counter[str] = Counter()
    lock = threading.Lock()

    def count(name: str) -> None:
        with lock:
            calls[name] += 1

    @app.task(name="legacy.add", shared=False)
    def add(x: int, y: int) -> int:  # an unchanged legacy task
        count("add")
        return x + y

    @app.task(
        name="legacy.flaky",
        shared=False,
        autoretry_for=(ValueError,),
        max_retries=1,
        default_retry_delay=0.1,
    )
    def flaky() -> None:
        count("flaky")
        raise ValueError("the payment provider said no")

    @flow.function(id="uses-legacy", trigger=event("t/legacy"), retries=2)
    def uses_legacy(ctx):  # type: ignore[no-untyped-def]
        total = ctx.step.invoke("add", task=add, args=(2,), kwargs={"y": 3})
        try:
            ctx.step.invoke("flaky", task=flaky, timeout="30s")
            failure = None
        except StepError as exc:
            failure = [exc.error_type, exc.error["message"]]
        if ctx.attempt == 0:
            raise RuntimeError("force a replay: the tasks must not be sent again")
        return {"total": total, "failure": failure}

    with worker(flow, concurrency=4):
        [eid] = flow.send(Event(name="t/legacy"))
        run = wait_for_run(flow, event_id=eid, timeout=60)

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"total": 5, "failure": ["ValueError", "the payment provider said no"]}
    # add ran once; flaky ran its own Celery retry (2 tries) once; the replay sent nothing
    assert calls == {"add": 1, "flaky": 2}
    assert [s.kind for s in run.steps] == ["task", "task"]
    assert run.steps[0].output == 5


@pytest.mark.parametrize("stack", ["embedded", "redis-postgres"], indirect=True)
def test_a_legacy_task_triggered_by_an_event(stack: Stack) -> None:
    flow = make_flow(stack)
    app = flow.app
    sent: list[tuple[str, str]] = []

    @app.task(name="legacy.send_welcome", shared=False)
    def send_welcome(email: str, plan: str = "free") -> str:
        sent.append((email, plan))
        return f"welcomed {email}"

    @app.task(name="legacy.notify", shared=False)
    def notify(address: str) -> str:
        sent.append((address, "notify"))
        return address

    flow.subscribe(send_welcome, trigger=event("user/signed_up"))
    flow.subscribe(
        notify,
        trigger=event("user/signed_up"),
        kwargs=lambda ev: {"address": ev.data["email"].upper()},
    )

    with worker(flow, concurrency=4):
        ids = flow.send(Event(name="user/signed_up", id="evt-1", data={"email": "a@x.io"}))
        flow.send(Event(name="user/signed_up", id="evt-1", data={"email": "a@x.io"}))  # dup
        runs = wait_for(
            lambda: (
                [r for r in flow.list_runs(event_id=ids[0]) if r.status.value == "completed"]
                if len(flow.list_runs(event_id=ids[0], status="completed")) == 2
                else None
            ),
            timeout=30,
            what="both subscribed tasks",
        )

    assert {r.function_id: r.output for r in runs} == {
        "task:legacy.send_welcome": "welcomed a@x.io",
        "task:legacy.notify": "A@X.IO",
    }
    assert sorted(sent) == [("A@X.IO", "notify"), ("a@x.io", "free")]  # once each


@pytest.mark.parametrize("stack", ["embedded", "redis-postgres"], indirect=True)
def test_old_call_sites_start_runs(stack: Stack) -> None:
    flow = make_flow(stack)

    @flow.function(id="charge", trigger=event("billing/charge"), params=["order_id", "amount"])
    def charge(ctx):  # type: ignore[no-untyped-def]
        data = ctx.event.data
        if data["amount"] < 0:
            raise ValueError("negative amount")
        return ctx.step.run(
            "charge", lambda: {"order": data["order_id"], "charged": data["amount"]}
        )

    @flow.function(id="keywords-only", retries=0)
    def keywords_only(ctx):  # type: ignore[no-untyped-def]
        return ctx.event.data

    with pytest.raises(TypeError, match=r"keywords-only.*no params"):
        keywords_only.delay(1)
    with pytest.raises(TypeError, match=r"charge\(\) takes 2 positional"):
        charge.delay("o-1", 9.5, "extra")
    with pytest.raises(TypeError, match="does not support link"):
        charge.apply_async(("o-1", 1), link=None)

    with worker(flow, concurrency=4):
        handle = charge.delay("o-1", 9.5)
        assert handle.get(timeout=30) == {"order": "o-1", "charged": 9.5}
        later = charge.apply_async(("o-2",), {"amount": 1}, countdown=1, queue="ignored")
        assert later.get(timeout=30) == {"order": "o-2", "charged": 1}
        kw = keywords_only.apply_async(kwargs={"a": 1})
        assert kw.get(timeout=30) == {"a": 1}
        bad = charge.delay(order_id="o-3", amount=-1)
        with pytest.raises(RunFailedError, match=r"failed.*negative amount"):
            bad.get(timeout=60)

    delayed = flow.get_run(later.id)
    assert delayed.started_at and (delayed.started_at - delayed.created_at).total_seconds() >= 0.9
    assert flow.get_run(handle.id).events[0].data == {"order_id": "o-1", "amount": 9.5}


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
def test_legacy_canvas_keeps_working_beside_flow_functions(stack: Stack) -> None:
    flow = make_flow(stack)
    app = flow.app
    seen: list[int] = []

    @app.task(name="legacy.step", shared=False)
    def step(total: int, add: int) -> int:
        seen.append(total + add)
        return total + add

    @flow.function(id="beside", trigger=event("t/beside"))
    def beside(ctx):  # type: ignore[no-untyped-def]
        return ctx.step.run("x", lambda: "flow ran")

    with worker(flow, concurrency=2):
        chain(step.s(1, 2), step.s(3), step.s(4)).apply_async()
        [eid] = flow.send(Event(name="t/beside"))
        assert wait_for_run(flow, event_id=eid).output == "flow ran"
        wait_for(lambda: seen == [3, 6, 10], timeout=20, what="the legacy chain")
