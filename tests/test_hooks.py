"""Hooks (celeryflow/hooks.py) on a real worker: what a recording hook is told, in
which order, and that a hook that raises breaks nothing."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
from celery import Celery
from flowkit import make_flow
from services import Stack

from celeryflow import ConfigError, Event, Flow, Hook, NonRetriableError, RunStatus, event
from celeryflow.hooks import (
    EventReceived,
    MemoLoaded,
    RunFinished,
    RunParked,
    RunQueued,
    RunStarted,
    RunWoken,
    StepFinished,
    StepRetried,
    StepStarted,
)
from celeryflow.testing import wait_for, wait_for_run, worker

METHODS = [
    "event_received",
    "run_queued",
    "run_woken",
    "run_started",
    "run_parked",
    "run_finished",
    "step_started",
    "step_finished",
    "step_retried",
]


class Recorder(Hook):
    """Records every call as (method, info), from any thread."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self._lock = threading.Lock()

    def _add(self, method: str, info: Any) -> None:
        with self._lock:
            self.calls.append((method, info))

    def of_run(self, run_id: str) -> list[tuple[str, Any]]:
        with self._lock:
            return [(m, i) for m, i in self.calls if getattr(i, "run_id", None) == run_id]

    def names(self, run_id: str) -> list[str]:
        return [_label(m, i) for m, i in self.of_run(run_id)]


def _label(method: str, info: Any) -> str:
    if isinstance(info, RunParked):
        return f"{method}:{info.reason}:{info.step_id}"
    if isinstance(info, RunFinished):
        return f"{method}:{info.status}"
    if isinstance(info, StepFinished):
        return f"{method}:{info.step_id}:{info.status}"
    if isinstance(info, (StepStarted, StepRetried)):
        return f"{method}:{info.step_id}:{info.attempt}"
    if isinstance(info, RunStarted):
        return f"{method}:{'first' if info.first else 'again'}"
    return method


for _method in METHODS:

    def _record(self: Recorder, info: Any, _m: str = _method) -> None:
        self._add(_m, info)

    setattr(Recorder, _method, _record)


class Raising(Hook):
    """A hook with a bug in every method."""

    def __init__(self) -> None:
        self.calls = 0


for _method in METHODS:

    def _raise(self: Raising, info: Any, _m: str = _method) -> None:
        self.calls += 1
        raise RuntimeError(f"hook bug in {_m}")

    setattr(Raising, _method, _raise)


def _finished(recorder: Recorder, run_id: str) -> bool:
    return any(m == "run_finished" for m, _ in recorder.of_run(run_id))


class StoreReader(Hook):
    """Reads the run from the store as it is told: the change must be committed."""

    def __init__(self) -> None:
        self.flow: Flow | None = None
        self.seen: list[tuple[str, str]] = []

    def _read(self, method: str, run_id: str) -> None:
        assert self.flow is not None
        self.seen.append((method, self.flow.get_run(run_id).status.value))

    def run_queued(self, info: RunQueued) -> None:
        # a worker may have claimed it already: that it can be read is the point
        assert self.flow is not None
        self.flow.get_run(info.run_id)
        self.seen.append(("run_queued", "stored"))

    def run_parked(self, info: RunParked) -> None:
        self._read("run_parked", info.run_id)

    def run_finished(self, info: RunFinished) -> None:
        self._read("run_finished", info.run_id)


@pytest.mark.parametrize("stack", ["embedded", "redis-postgres"], indirect=True)
def test_a_two_step_function_with_a_sleep(stack: Stack) -> None:
    recorder, reader = Recorder(), StoreReader()
    flow = make_flow(stack, hooks=[recorder, reader])
    reader.flow = flow

    @flow.function(id="napper", trigger=event("hooks/nap"))
    def napper(ctx):  # type: ignore[no-untyped-def]
        ctx.step.run("one", lambda: 1)
        ctx.step.sleep("nap", "300ms")
        return ctx.step.run("two", lambda: 2)

    with worker(flow):
        [event_id] = flow.send(Event(name="hooks/nap", data={"trace": "abc"}))
        run = wait_for_run(flow, event_id=event_id, timeout=20)
        wait_for(lambda: _finished(recorder, run.id), timeout=10)

    assert run.status == RunStatus.COMPLETED, run.error
    assert recorder.names(run.id) == [
        "run_queued",
        "run_started:first",
        "step_started:one:1",
        "step_finished:one:completed",
        "run_parked:sleep:nap",
        "run_woken",
        "run_started:again",
        "step_started:two:1",
        "step_finished:two:completed",
        "run_finished:completed",
    ]
    received = [i for m, i in recorder.calls if m == "event_received"]
    assert [type(i) for i in received] == [EventReceived]
    assert received[0].event.id == event_id and received[0].event.data == {"trace": "abc"}
    calls = dict(recorder.of_run(run.id))
    queued, parked = calls["run_queued"], calls["run_parked"]
    assert isinstance(queued, RunQueued) and queued.function_id == "napper"
    assert queued.event_id == event_id
    assert isinstance(parked, RunParked) and parked.wake_at is not None
    woken = calls["run_woken"]
    assert isinstance(woken, RunWoken) and woken.event.data == {"trace": "abc"}
    done = calls["run_finished"]
    assert isinstance(done, RunFinished) and done.error is None and done.duration >= 0
    index = {i.step_id: i.index for m, i in recorder.of_run(run.id) if m == "step_started"}
    assert index == {"one": 0, "two": 2}
    # told after the commit: the store already shows what the hook reports
    assert reader.seen == [
        ("run_queued", "stored"),
        ("run_parked", "sleeping"),
        ("run_finished", "completed"),
    ]


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
def test_a_retried_step_and_a_step_that_fails_for_good(stack: Stack) -> None:
    recorder = Recorder()
    flow = make_flow(stack)
    flow.add_hook(recorder)
    tries: list[int] = []

    def flaky() -> str:
        tries.append(1)
        if len(tries) == 1:
            raise ConnectionError("first try")
        return "ok"

    def doomed() -> None:
        raise NonRetriableError("no")

    @flow.function(id="shaky", trigger=event("hooks/shaky"), retries=2)
    def shaky(ctx):  # type: ignore[no-untyped-def]
        ctx.step.run("flaky", flaky)
        ctx.step.run("doomed", doomed)

    with worker(flow):
        [event_id] = flow.send(Event(name="hooks/shaky"))
        run = wait_for_run(flow, event_id=event_id, timeout=20)
        wait_for(lambda: _finished(recorder, run.id), timeout=10)

    assert run.status == RunStatus.FAILED
    assert recorder.names(run.id) == [
        "run_queued",
        "run_started:first",
        "step_started:flaky:1",
        "step_retried:flaky:1",
        "run_parked:retry:flaky",
        "run_woken",
        "run_started:again",
        "step_started:flaky:2",
        "step_finished:flaky:completed",
        "step_started:doomed:1",
        "step_finished:doomed:failed",
        "run_finished:failed",
    ]
    calls = recorder.of_run(run.id)
    retried = next(i for m, i in calls if m == "step_retried")
    assert retried.error == "ConnectionError" and retried.wake_at is not None
    failed = next(i for m, i in calls if m == "step_finished" and i.status == "failed")
    assert failed.error == "NonRetriableError"
    assert next(i for m, i in calls if m == "run_finished").error == "NonRetriableError"


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
def test_an_event_triggered_run_that_waits_and_sends(stack: Stack) -> None:
    recorder = Recorder()
    flow = make_flow(stack, hooks=[recorder])

    @flow.function(id="approver", trigger=event("hooks/order"))
    def approver(ctx):  # type: ignore[no-untyped-def]
        approval = ctx.step.wait_for_event(
            "approval", event="hooks/approved", match="data.order", timeout="1m"
        )
        ctx.step.send_event("notify", {"name": "hooks/notified", "data": {"ok": True}})
        return approval is not None

    @flow.function(id="notified", trigger=event("hooks/notified"))
    def notified(ctx):  # type: ignore[no-untyped-def]
        return ctx.event.data

    with worker(flow):
        [order] = flow.send(Event(name="hooks/order", data={"order": 7}))
        wait_for_run(flow, event_id=order, status="waiting", timeout=15)
        flow.send(Event(name="hooks/approved", data={"order": 7}))
        run = wait_for_run(flow, event_id=order, timeout=20)
        wait_for(lambda: _finished(recorder, run.id), timeout=10)
        [child] = flow.list_runs(function_id="notified")
        wait_for(lambda: _finished(recorder, child.id), timeout=20)

    assert run.status == RunStatus.COMPLETED and run.output is True, run.error
    assert recorder.names(run.id) == [
        "run_queued",
        "run_started:first",
        "run_parked:wait:approval",
        "run_woken",
        "run_started:again",
        "run_finished:completed",
    ]
    assert recorder.names(child.id) == [
        "run_queued",
        "run_started:first",
        "run_finished:completed",
    ]
    parked = next(i for m, i in recorder.of_run(run.id) if m == "run_parked")
    assert parked.wake_at is not None  # the wait's timeout
    names = [i.event.name for m, i in recorder.calls if m == "event_received"]
    assert names == ["hooks/order", "hooks/approved", "hooks/notified"]
    # the child's run_queued is told in the worker, after the sending step committed
    assert next(i for m, i in recorder.of_run(child.id)).function_id == "notified"


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
def test_a_raising_hook_breaks_no_run(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    raising, recorder = Raising(), Recorder()
    flow = make_flow(stack, hooks=[raising, recorder])

    @flow.function(id="sturdy", trigger=event("hooks/sturdy"))
    def sturdy(ctx):  # type: ignore[no-untyped-def]
        ctx.step.run("one", lambda: 1)
        ctx.step.sleep("nap", "100ms")
        return ctx.step.run("two", lambda: 2)

    with caplog.at_level(logging.ERROR, logger="celeryflow.hooks"), worker(flow):
        [event_id] = flow.send(Event(name="hooks/sturdy"))
        run = wait_for_run(flow, event_id=event_id, timeout=20)
        wait_for(lambda: _finished(recorder, run.id), timeout=10)

    assert run.status == RunStatus.COMPLETED and run.output == 2, run.error
    # the hook after the raising one is still told everything
    assert recorder.names(run.id)[-1] == "run_finished:completed"
    assert raising.calls == len(recorder.calls)
    assert any("hook bug in run_started" in (r.exc_text or "") for r in caplog.records)


class Rot(Hook):
    """Changes what the replay returns (as a decrypting plugin does): each string
    output reversed, and notes what it was given."""

    def __init__(self) -> None:
        self.loaded: list[dict[str, Any]] = []

    def memo_loaded(self, info: MemoLoaded) -> None:
        self.loaded.append(dict(info.outputs))
        for key, value in list(info.outputs.items()):
            if isinstance(value, str):
                info.outputs[key] = value[::-1]


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
def test_memo_loaded_changes_what_the_replay_returns_not_the_store(stack: Stack) -> None:
    rot = Rot()
    flow = make_flow(stack, hooks=[rot])
    seen: list[Any] = []

    @flow.function(id="rot", trigger=event("hooks/rot"))
    def rotted(ctx):  # type: ignore[no-untyped-def]
        seen.append(ctx.step.run("word", lambda: "stressed"))
        ctx.step.run("number", lambda: 7)
        ctx.step.sleep("nap", "100ms")
        return ctx.step.run("echo", lambda: seen[-1])

    with worker(flow):
        [event_id] = flow.send(Event(name="hooks/rot"))
        run = wait_for_run(flow, event_id=event_id, timeout=20)

    assert run.status == RunStatus.COMPLETED, run.error
    # the first execution ran the step; the second replayed it through the hook
    assert seen == ["stressed", "desserts"]
    assert run.output == "desserts"
    # the hook was given the completed steps' outputs (the sleep had not ended)
    assert rot.loaded == [{}, {"word": "stressed", "number": 7}]
    assert {s.id: s.output for s in run.steps}["word"] == "stressed"


def test_a_hook_must_be_a_hook(tmp_path: Any) -> None:
    flow = Flow(Celery("t", broker="memory://"), store=f"sqlite:///{tmp_path}/s.db")
    with pytest.raises(ConfigError, match=r"celeryflow\.Hook"):
        flow.add_hook(object())  # type: ignore[arg-type]
