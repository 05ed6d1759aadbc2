"""step.invoke and on_failure on a real worker (issue 4)."""

from __future__ import annotations

from collections import Counter

import pytest
from flowkit import make_flow
from services import Stack

from celeryflow import Event, RunStatus, StepError, event
from celeryflow.testing import wait_for, wait_for_run, worker


def test_invoke_returns_the_child_output_and_raises_its_failure(stack: Stack) -> None:
    flow = make_flow(stack)
    calls: Counter[str] = Counter()

    @flow.function(id="charge", retries=0)
    def charge(ctx):  # type: ignore[no-untyped-def]
        amount = ctx.event.data["amount"]
        if amount < 0:
            raise ValueError("negative amount")
        return ctx.step.run("charge", lambda: {"charged": amount})

    @flow.function(id="checkout", trigger=event("cart/checkout"))
    def checkout(ctx):  # type: ignore[no-untyped-def]
        ctx.step.run("before", lambda: calls.update(["before"]))
        receipt = ctx.step.invoke("pay", function=charge, data={"amount": 12})
        try:
            ctx.step.invoke("refund", function="charge", data={"amount": -1})
            refused = None
        except StepError as exc:
            refused = exc.error_type
        return {"receipt": receipt, "refused": refused}

    with worker(flow, concurrency=4):
        [eid] = flow.send(Event(name="cart/checkout"))
        run = wait_for_run(flow, event_id=eid, timeout=30)

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"receipt": {"charged": 12}, "refused": "ValueError"}
    assert calls == {"before": 1}
    children = flow.list_runs(function_id="charge")
    assert len(children) == 2
    assert {c.parent_run_id for c in children} == {run.id}
    assert {c.status for c in children} == {RunStatus.COMPLETED, RunStatus.FAILED}
    assert [s.kind for s in run.steps] == ["run", "invoke", "invoke"]


@pytest.mark.parametrize("stack", ["embedded", "redis-postgres"], indirect=True)
def test_on_failure_receives_the_error_and_failures_are_broadcast(stack: Stack) -> None:
    flow = make_flow(stack)

    @flow.function(id="alert", retries=0)
    def alert(ctx):  # type: ignore[no-untyped-def]
        # the failed run's own event, and what failed
        return {
            "event": [ctx.event.name, ctx.event.data],
            "failed": ctx.failure.function_id,
            "error": ctx.failure.error["type"],
            "run": ctx.failure.run_id,
            "raw": ctx.failure.event.name,
        }

    @flow.function(id="audit", trigger=event("celeryflow/function.failed"))
    def audit(ctx):  # type: ignore[no-untyped-def]
        assert ctx.failure is None  # triggered by the name: the event as it is
        return [ctx.event.data["function_id"], ctx.event.data["error"]["type"]]

    @flow.function(id="fragile", trigger=event("t/fragile"), retries=0, on_failure=alert)
    def fragile(ctx):  # type: ignore[no-untyped-def]
        ctx.step.run("boom", lambda: 1 / 0)

    with worker(flow, concurrency=4):
        [eid] = flow.send(Event(name="t/fragile", data={"order": 7}))
        failed = wait_for_run(flow, event_id=eid, timeout=20)
        handled = wait_for(
            lambda: [
                r for r in flow.list_runs(function_id="alert") if r.status.value == "completed"
            ],
            timeout=20,
            what="the on_failure handler",
        )
        audited = wait_for(
            lambda: [
                r for r in flow.list_runs(function_id="audit") if r.status.value == "completed"
            ],
            timeout=20,
            what="the catch-all failure handler",
        )

    assert failed.status == RunStatus.FAILED
    assert handled[0].output == {
        "event": ["t/fragile", {"order": 7}],
        "failed": "fragile",
        "error": "ZeroDivisionError",
        "run": failed.id,
        "raw": "celeryflow/function.failed",
    }
    assert handled[0].events[0].data["event"]["data"] == {"order": 7}
    assert [a.output for a in audited] == [["fragile", "ZeroDivisionError"]]


@pytest.mark.parametrize("stack", ["embedded", "redis-postgres"], indirect=True)
def test_invoke_timeout_and_a_cancelled_child_raise_step_error(stack: Stack) -> None:
    flow = make_flow(stack)

    @flow.function(id="slow-child")
    def slow_child(ctx):  # type: ignore[no-untyped-def]
        ctx.step.sleep("nap", "1h")

    @flow.function(id="parent", trigger=event("t/parent"))
    def parent(ctx):  # type: ignore[no-untyped-def]
        outcomes = []
        for step, timeout in (("timed", "1s"), ("cancelled", None)):
            try:
                ctx.step.invoke(step, function=slow_child, timeout=timeout)
                outcomes.append("returned")
            except StepError as exc:
                outcomes.append(exc.error_type)
        return outcomes

    with worker(flow, concurrency=4):
        [eid] = flow.send(Event(name="t/parent"))
        # the second child: cancel it once it sleeps; its parent must not wait forever
        second = wait_for(
            lambda: [
                r
                for r in flow.list_runs(function_id="slow-child")
                if r.status.value == "sleeping"
                and len(flow.list_runs(function_id="slow-child")) == 2
                and r.id == flow.list_runs(function_id="slow-child")[0].id
            ],
            timeout=20,
            what="the second child sleeping",
        )[0]
        assert flow.cancel(second.id)
        run = wait_for_run(flow, event_id=eid, timeout=30)

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == ["TimeoutError", "Cancelled"]
