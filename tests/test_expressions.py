"""CEL expressions: a misspelt name fails at decoration (or when a wait is called),
naming the function, the setting and the close match; a key that cannot be
evaluated for an event never merges that event with others."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from flowkit import make_flow
from services import Stack

from celeryflow import (
    CancelOn,
    Concurrency,
    Event,
    ExpressionError,
    Flow,
    Priority,
    RunStatus,
    event,
)
from celeryflow.expressions import ASYNC, compile_expression
from celeryflow.testing import wait_for_run, worker


def _flow(tmp_path: Path) -> Flow:
    app = Celery("x", broker=f"celeryflow+sqlite:///{tmp_path}/broker.db")
    return Flow(app, store=f"sqlite:///{tmp_path}/store.db")


def test_misspelt_root_in_a_trigger_names_function_setting_and_close_match(
    tmp_path: Path,
) -> None:
    flow = _flow(tmp_path)
    with pytest.raises(
        ExpressionError,
        match=r"function 'welcome' trigger if_: unknown name 'evnt' in "
        r".evnt.data.plan == 'x'.; did you mean 'event'\?",
    ):
        flow.function(id="welcome", trigger=event("a/b", if_="evnt.data.plan == 'x'"))(
            lambda ctx: None
        )
    assert "welcome" not in flow.functions
    # a trigger sees only the event: `async` belongs to waits and cancels
    with pytest.raises(ExpressionError, match=r"unknown name 'async'.*it can use 'event'"):
        flow.function(id="t2", trigger=event("a/b", if_="async.data.x == 1"))(lambda ctx: None)


def test_words_in_strings_and_comprehension_variables_are_not_names(tmp_path: Path) -> None:
    flow = _flow(tmp_path)
    sources = [
        "event.data.note == 'evnt and async and items.exists(q, q)'",
        'event.data.items.exists(item, item.sku == "a") && event.name != r"x\\"',
        "event.data.lines.map(l, l.qty).filter(n, n > 1).size() > 0",
        "event.data.tags.all(t, t.startsWith('a')) || event.data.tags.exists_one(t, t == 'b')",
        '"""triple "quoted" evnt""" != event.name',
    ]
    for i, source in enumerate(sources):
        flow.function(id=f"ok{i}", trigger=event("a/b", if_=source))(lambda ctx: None)
    # a free name beside a comprehension variable is still found
    with pytest.raises(ExpressionError, match=r"unknown name 'limt'"):
        compile_expression("event.data.items.exists(x, x > limt)", "here")


def test_each_setting_knows_its_names(tmp_path: Path) -> None:
    flow = _flow(tmp_path)
    # cancel_on's if_ sees event and async
    flow.function(
        id="c-ok",
        trigger=event("a/b"),
        cancel_on=[CancelOn(event="a/c", if_="async.data.id == event.data.id")],
    )(lambda ctx: None)
    with pytest.raises(
        ExpressionError, match=r"'c-bad' cancel_on\[0\] if_: unknown name 'asnc'.*'async'\?"
    ):
        flow.function(
            id="c-bad",
            trigger=event("a/b"),
            cancel_on=[{"event": "a/c", "if_": "asnc.data.id == event.data.id"}],
        )(lambda ctx: None)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"concurrency": Concurrency(limit=1, key="evnt.data.customer")}, r"concurrency\[0\].key"),
        ({"idempotency": "event.data.id + evnet.id"}, "idempotency"),
        ({"priority": Priority(run="async.data.x")}, r"priority.run"),
        ({"throttle": {"limit": 1, "period": "1s", "key": "data.customer"}}, "throttle.key"),
    ]
    for i, (settings, setting) in enumerate(cases):
        with pytest.raises(ExpressionError, match=rf"function 'fc{i}' {setting}: unknown name"):
            flow.function(id=f"fc{i}", trigger=event("a/b"), **settings)(lambda ctx: None)
    assert compile_expression("async.x == event.x", "wait", ASYNC).names == {"async", "event"}


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
def test_wait_for_event_if_typo_fails_the_run_naming_the_step(stack: Stack) -> None:
    flow = make_flow(stack)

    @flow.function(id="waiter", trigger=event("w/start"), retries=0)
    def waiter(ctx):  # type: ignore[no-untyped-def]
        ctx.step.run("before", lambda: 1)
        return ctx.step.wait_for_event(
            "for-pay", event="w/paid", timeout="1m", if_="asyn.data.id == event.data.id"
        )

    with worker(flow):
        [eid] = flow.send(Event(name="w/start", data={"id": 1}))
        run = wait_for_run(flow, event_id=eid, timeout=60)
    assert run.status == RunStatus.FAILED
    assert run.error is not None
    assert "step.wait_for_event('for-pay') if_: unknown name 'asyn'" in run.error["message"]
    assert "did you mean 'async'?" in run.error["message"]
    # nothing of the wait was recorded: no step, no waiter
    assert [s.id for s in run.steps] == ["before"]


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
def test_a_key_that_fails_on_an_event_skips_its_run_visibly(stack: Stack) -> None:
    flow = make_flow(stack)

    @flow.function(
        id="per-customer",
        trigger=event("o/placed"),
        concurrency=Concurrency(limit=1, key="event.data.customer"),
    )
    def per_customer(ctx):  # type: ignore[no-untyped-def]
        return ctx.step.run("work", lambda: ctx.event.data["customer"])

    @flow.function(id="once", trigger=event("o/placed"), idempotency="event.data.order")
    def once(ctx):  # type: ignore[no-untyped-def]
        return ctx.event.data.get("order")

    with worker(flow):
        ids = flow.send(
            [
                Event(name="o/placed", data={"customer": "a", "order": 1}),
                Event(name="o/placed", data={"order": 2}),  # no customer
                Event(name="o/placed", data={"customer": "b"}),  # no order
                Event(name="o/placed", data={"customer": "c"}),  # no order either
            ]
        )
        by_event = {
            eid: {r.function_id: wait_for_run(flow, r.id, timeout=60) for r in runs}
            for eid in ids
            if (runs := flow.list_runs(event_id=eid))
        }
    assert by_event[ids[0]]["per-customer"].status == RunStatus.COMPLETED
    assert by_event[ids[0]]["once"].output == 1
    skipped = by_event[ids[1]]["per-customer"]
    assert skipped.status == RunStatus.SKIPPED
    assert skipped.steps == []
    assert skipped.error is not None
    assert skipped.error["type"] == "ExpressionError"
    assert skipped.error["setting"] == "concurrency[0].key"
    assert "event.data.customer" in skipped.error["message"]
    assert by_event[ids[1]]["once"].status == RunStatus.COMPLETED  # its key was there
    # two events without an order are not merged under one idempotency key:
    # each run is skipped for its own failed key, not as a duplicate of the other
    for eid in ids[2:]:
        assert by_event[eid]["per-customer"].status == RunStatus.COMPLETED
        run = by_event[eid]["once"]
        assert run.status == RunStatus.SKIPPED
        assert run.error is not None
        assert run.error["setting"] == "idempotency"
        assert run.error["reason"] == "key"


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
def test_invoking_a_function_whose_key_fails_on_the_data_raises_step_error(
    stack: Stack,
) -> None:
    flow = make_flow(stack)

    @flow.function(id="child", concurrency=Concurrency(limit=2, key="event.data.tenant"))
    def child(ctx):  # type: ignore[no-untyped-def]
        return "ran"

    @flow.function(id="parent", trigger=event("p/go"), retries=0)
    def parent(ctx):  # type: ignore[no-untyped-def]
        try:
            return ctx.step.invoke("call", function=child, data={"no": "tenant"}, timeout="1m")
        except Exception as exc:
            return type(exc).__name__ + ": " + str(exc)

    with worker(flow):
        [eid] = flow.send(Event(name="p/go"))
        run = wait_for_run(flow, event_id=eid, timeout=60)
    assert run.status == RunStatus.COMPLETED
    assert run.output.startswith("StepError: step 'call' failed: ExpressionError")
    assert flow.list_runs(function_id="child") == []


def test_a_stored_wait_condition_with_an_unknown_name_matches_nothing() -> None:
    # recorded by a version that did not check names: it never matched, and an event
    # arriving for it must not make its sender fail now
    from celeryflow.events import condition_holds

    assert condition_holds("evnt.data.x == 1", {"data": {"x": 1}}, {"data": {}}) is False
    assert condition_holds("async.data.x == event.data.x", {"data": {"x": 1}}, {"data": {"x": 1}})
