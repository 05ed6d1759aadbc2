"""step.parallel on a real worker (issue 4): branches run as runs of their own."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import datetime

import pytest
from flowkit import make_flow
from services import Stack

from celeryflow import Event, RunStatus, StepError, event
from celeryflow.testing import wait_for, wait_for_run, worker


def _nap(label: str, seconds: float) -> dict[str, object]:
    start = time.time()
    time.sleep(seconds)
    return {"label": label, "start": start, "end": time.time()}


def test_three_branches_take_about_the_time_of_the_slowest(stack: Stack) -> None:
    flow = make_flow(stack)
    calls: Counter[str] = Counter()
    lock = threading.Lock()

    def counted(name: str) -> str:
        with lock:
            calls[name] += 1
        return name

    @flow.function(id="fan", trigger=event("t/fan"))
    def fan(ctx):  # type: ignore[no-untyped-def]
        ctx.step.run("before", counted, "before")
        results = ctx.step.parallel(
            "work",
            [
                lambda: ctx.step.run("a", _nap, "a", 1.0),
                lambda: ctx.step.run("b", _nap, "b", 2.0),
                lambda: [ctx.step.run("c1", _nap, "c", 1.5), ctx.step.run("c2", counted, "c2")],
            ],
        )
        ctx.step.run("after", counted, "after")
        return results

    with worker(flow, concurrency=4):
        [eid] = flow.send(Event(name="t/fan"))
        run = wait_for_run(flow, event_id=eid, timeout=60)

    assert run.status == RunStatus.COMPLETED, run.error
    a, b, (c, c2) = run.output
    assert [a["label"], b["label"], c["label"], c2] == ["a", "b", "c", "c2"]
    # all three branches were sleeping at the same moment: they ran side by side
    assert max(x["start"] for x in (a, b, c)) < min(x["end"] for x in (a, b, c))
    step = next(s for s in run.steps if s.id == "work")
    assert step.kind == "parallel" and step.started_at and step.ended_at
    elapsed = (step.ended_at - step.started_at).total_seconds()
    assert elapsed < 4.5, f"parallel step took {elapsed:.1f}s; the branches sum to 4.5s"
    assert calls == {"before": 1, "after": 1, "c2": 1}, "a step ran twice"
    branches = [r for r in flow.list_runs(function_id="fan") if r.parent_run_id == run.id]
    assert sorted(r.branch for r in branches if r.branch is not None) == [0, 1, 2]
    assert all(r.status == RunStatus.COMPLETED for r in branches)
    c_run = flow.get_run(next(r.id for r in branches if r.branch == 2))
    assert [s.id for s in c_run.steps] == ["c1", "c2"]  # branch steps live on the branch


@pytest.mark.parametrize("stack", ["embedded", "redis-postgres"], indirect=True)
def test_race_returns_the_first_and_cancels_the_rest(stack: Stack) -> None:
    flow = make_flow(stack)

    @flow.function(id="racer", trigger=event("t/race"))
    def racer(ctx):  # type: ignore[no-untyped-def]
        return ctx.step.parallel(
            "first",
            [
                lambda: [ctx.step.sleep("slow-nap", "30s"), "slow"][1],
                lambda: ctx.step.run("fast", lambda: "fast"),
            ],
            mode="race",
        )

    with worker(flow, concurrency=4):
        [eid] = flow.send(Event(name="t/race"))
        run = wait_for_run(flow, event_id=eid, timeout=30)
        loser = wait_for(
            lambda: [
                r
                for r in flow.list_runs(function_id="racer")
                if r.branch == 0 and r.status == RunStatus.CANCELLED
            ],
            timeout=10,
            what="the losing branch to be cancelled",
        )

    assert (run.status, run.output) == (RunStatus.COMPLETED, "fast"), run.error
    assert next(s for s in run.steps if s.id == "first").kind == "race"
    assert loser[0].parent_run_id == run.id


@pytest.mark.parametrize("stack", ["embedded", "redis-postgres"], indirect=True)
def test_a_failed_branch_raises_step_error_in_the_parent(stack: Stack) -> None:
    flow = make_flow(stack)

    @flow.function(id="brittle", trigger=event("t/brittle"), retries=0)
    def brittle(ctx):  # type: ignore[no-untyped-def]
        try:
            ctx.step.parallel(
                "both",
                [
                    lambda: ctx.step.run("ok", lambda: 1),
                    lambda: ctx.step.run("bad", lambda: 1 / 0),
                ],
            )
        except StepError as exc:
            return {
                "type": exc.error_type,
                "raised_as": exc.error.get("raised_as"),
                "branch": exc.error["branch"],
            }
        return "no error"

    with worker(flow, concurrency=4):
        [eid] = flow.send(Event(name="t/brittle"))
        run = wait_for_run(flow, event_id=eid, timeout=30)

    assert run.status == RunStatus.COMPLETED, run.error
    # the branch failed with the StepError of its step "bad", caused by the division
    assert run.output == {"type": "ZeroDivisionError", "raised_as": "StepError", "branch": 1}
    # the branch's failure is the parent's to handle: no function.failed event for it
    assert flow.list_runs(event_id=None, function_id="celeryflow/function.failed") == []


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
def test_async_function_branches_and_memo_after_a_retry(stack: Stack) -> None:
    flow = make_flow(stack)
    calls: Counter[str] = Counter()
    lock = threading.Lock()

    def once(name: str) -> str:
        with lock:
            calls[name] += 1
        return name

    @flow.function(id="async-fan", trigger=event("t/async-fan"), retries=2)
    async def async_fan(ctx):  # type: ignore[no-untyped-def]
        async def branch(name: str) -> str:
            return str(await ctx.step.run(name, once, name))

        got = await ctx.step.parallel("pair", [lambda: branch("x"), lambda: branch("y")])
        if ctx.attempt == 0:
            raise RuntimeError("force a retry of the whole function")
        return got

    with worker(flow, concurrency=4):
        [eid] = flow.send(Event(name="t/async-fan"))
        run = wait_for_run(flow, event_id=eid, timeout=30)

    assert (run.status, run.output) == (RunStatus.COMPLETED, ["x", "y"]), run.error
    assert run.attempt == 1
    assert calls == {"x": 1, "y": 1}, "a retry of the parent re-ran a branch"
    assert isinstance(run.ended_at, datetime)
