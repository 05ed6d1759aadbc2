"""wait_for_event, send_event, cancel_on and Timeouts on a real worker (issue 4)."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from flowkit import make_flow
from services import Stack

from celeryflow import CancelOn, Event, RunStatus, Timeouts, event
from celeryflow.testing import wait_for, wait_for_run, worker


def _runs_of(flow, function_id: str, status: str | None = None):  # type: ignore[no-untyped-def]
    return flow.list_runs(function_id=function_id, status=status, limit=1000)


def test_each_waiting_run_resumes_with_its_own_event(stack: Stack) -> None:
    flow = make_flow(stack)

    @flow.function(id="ship", trigger=event("order/placed"))
    def ship(ctx):  # type: ignore[no-untyped-def]
        label = ctx.step.wait_for_event(
            "label", event="shipment/created", match="data.order_id", timeout="1m"
        )
        return label.data["carrier"] if label else None

    with worker(flow, concurrency=4):
        [a] = flow.send(Event(name="order/placed", data={"order_id": "A"}))
        [b] = flow.send(Event(name="order/placed", data={"order_id": "B"}))
        wait_for(lambda: len(_runs_of(flow, "ship", "waiting")) == 2, what="two waiting runs")
        flow.send(Event(name="shipment/created", data={"order_id": "B", "carrier": "dhl"}))
        flow.send(Event(name="shipment/created", data={"order_id": "A", "carrier": "ups"}))
        flow.send(Event(name="shipment/created", data={"order_id": "C", "carrier": "no one"}))
        run_a = wait_for_run(flow, event_id=a)
        run_b = wait_for_run(flow, event_id=b)

    assert (run_a.status, run_a.output) == (RunStatus.COMPLETED, "ups")
    assert (run_b.status, run_b.output) == (RunStatus.COMPLETED, "dhl")
    assert run_a.steps[0].kind == "wait" and run_a.steps[0].status == "completed"


@pytest.mark.parametrize("stack", ["embedded", "redis-postgres"], indirect=True)
def test_timeout_returns_none(stack: Stack) -> None:
    flow = make_flow(stack)

    @flow.function(id="impatient", trigger=event("t/impatient"))
    def impatient(ctx):  # type: ignore[no-untyped-def]
        got = ctx.step.wait_for_event("nothing", event="never/sent", timeout="1s")
        return {"got": got}

    with worker(flow):
        [eid] = flow.send(Event(name="t/impatient"))
        run = wait_for_run(flow, event_id=eid, timeout=20)

    assert run.status == RunStatus.COMPLETED and run.output == {"got": None}
    assert run.ended_at is not None and run.steps[0].wake_at is not None
    assert 1.0 <= (run.ended_at - run.created_at).total_seconds() < 3.0
    # Woken by its own timer, not by a later reconciler pass; the margin is for a
    # loaded machine.
    assert (run.ended_at - run.steps[0].wake_at).total_seconds() < 2.5


def test_one_event_resumes_many_runs_once_each_and_if_conditions(stack: Stack) -> None:
    flow = make_flow(stack)
    resumed: Counter[str] = Counter()

    @flow.function(id="bidder", trigger=event("auction/joined"))
    def bidder(ctx):  # type: ignore[no-untyped-def]
        bid = ctx.step.wait_for_event(
            "bid", event="auction/bid", if_="async.data.total > event.data.min", timeout="1m"
        )
        ctx.step.run("count", lambda: resumed.update([ctx.event.data["who"]]))
        return bid.data["total"] if bid else None

    with worker(flow, concurrency=4):
        ids = flow.send(
            [
                Event(name="auction/joined", data={"who": "low", "min": 10}),
                Event(name="auction/joined", data={"who": "mid", "min": 50}),
                Event(name="auction/joined", data={"who": "high", "min": 500}),
            ]
        )
        wait_for(lambda: len(_runs_of(flow, "bidder", "waiting")) == 3, what="3 waiting runs")
        bid = Event(name="auction/bid", id="bid-1", data={"total": 100})
        flow.send(bid)
        flow.send(bid)  # the same id again: deduplicated, resumes nothing twice
        low = wait_for_run(flow, event_id=ids[0])
        mid = wait_for_run(flow, event_id=ids[1])
        high = flow.get_run(flow.list_runs(event_id=ids[2])[0].id)

    assert (low.output, mid.output) == (100, 100)
    assert high.status == RunStatus.WAITING  # 100 is not above 500
    assert resumed == {"low": 1, "mid": 1}


@pytest.mark.parametrize("stack", ["embedded", "redis-postgres"], indirect=True)
def test_lookback_takes_an_early_event_and_without_it_the_event_is_missed(stack: Stack) -> None:
    flow = make_flow(stack)
    gates = {"with": threading.Event(), "without": threading.Event()}
    inside = {"with": threading.Event(), "without": threading.Event()}

    def busy(kind: str) -> str:
        inside[kind].set()
        assert gates[kind].wait(15)
        return "busy"

    @flow.function(id="looks-back", trigger=event("t/look"))
    def looks_back(ctx):  # type: ignore[no-untyped-def]
        kind = ctx.event.data["kind"]
        ctx.step.run("busy", busy, kind)
        lookback = "5m" if kind == "with" else None
        got = ctx.step.wait_for_event(
            "paid", event="t/paid", match="data.order", timeout="2s", lookback=lookback
        )
        return got.data["amount"] if got else None

    with worker(flow, concurrency=4):
        [with_id] = flow.send(Event(name="t/look", data={"kind": "with", "order": 1}))
        [without_id] = flow.send(Event(name="t/look", data={"kind": "without", "order": 2}))
        assert inside["with"].wait(15) and inside["without"].wait(15)
        # both payments arrive while the runs are still busy before their waits
        flow.send(Event(name="t/paid", data={"order": 1, "amount": 10}))
        flow.send(Event(name="t/paid", data={"order": 2, "amount": 20}))
        gates["with"].set()
        gates["without"].set()
        with_run = wait_for_run(flow, event_id=with_id, timeout=20)
        without_run = wait_for_run(flow, event_id=without_id, timeout=20)

    assert with_run.output == 10
    paid = next(s for s in with_run.steps if s.id == "paid")
    assert paid.status == "completed" and paid.ended_at is not None
    assert without_run.output is None  # Inngest semantics: only events after the wait began


def test_cancel_on_cancels_a_sleeping_and_a_waiting_run(stack: Stack) -> None:
    flow = make_flow(stack)
    after: Counter[str] = Counter()
    cancel = [CancelOn(event="order/cancelled", match="data.order_id")]

    @flow.function(id="sleeps", trigger=event("order/placed"), cancel_on=cancel)
    def sleeps(ctx):  # type: ignore[no-untyped-def]
        ctx.step.sleep("cool-off", "1h")
        after["sleeps"] += 1

    @flow.function(
        id="waits",
        trigger=event("order/placed"),
        cancel_on=[{"event": "order/cancelled", "match": "data.order_id"}],
    )
    def waits(ctx):  # type: ignore[no-untyped-def]
        ctx.step.wait_for_event("label", event="shipment/created", timeout="1h")
        after["waits"] += 1

    with worker(flow, concurrency=4):
        [placed] = flow.send(Event(name="order/placed", data={"order_id": "o-1"}))
        [other] = flow.send(Event(name="order/placed", data={"order_id": "o-2"}))
        wait_for(
            lambda: (
                {r.status.value for r in flow.list_runs(event_id=placed)} == {"sleeping", "waiting"}
            ),
            what="one sleeping and one waiting run",
        )
        flow.send(Event(name="order/cancelled", data={"order_id": "o-1"}))
        runs = wait_for(
            lambda: (
                (rs := flow.list_runs(event_id=placed))
                and all(r.status == RunStatus.CANCELLED for r in rs)
                and rs
            ),
            what="both runs of o-1 cancelled",
        )
        flow.doorbell.ring([r.id for r in runs])  # late doorbells resume nothing
        time.sleep(0.5)

    assert len(runs) == 2 and all(r.ended_at for r in runs)
    assert {r.status for r in flow.list_runs(event_id=other)} == {
        RunStatus.SLEEPING,
        RunStatus.WAITING,
    }
    assert after == {}


def test_send_event_is_not_repeated_by_a_retry(stack: Stack) -> None:
    flow = make_flow(stack)
    tries: Counter[str] = Counter()

    @flow.function(id="fan-out", trigger=event("batch/ready"), retries=2)
    def fan_out(ctx):  # type: ignore[no-untyped-def]
        n = ctx.event.data["n"]
        ids = ctx.step.send_event(
            "items", [Event(name="item/process", data={"i": i}) for i in range(n)]
        )

        def flaky() -> str:
            tries["after-send"] += 1
            if tries["after-send"] == 1:
                raise RuntimeError("forces a retry after the send")
            return "ok"

        ctx.step.run("after", flaky)
        return len(ids)

    @flow.function(id="item", trigger=event("item/process"))
    def item(ctx):  # type: ignore[no-untyped-def]
        return ctx.event.data["i"]

    with worker(flow, concurrency=4):
        [eid] = flow.send(Event(name="batch/ready", data={"n": 50}))
        run = wait_for_run(flow, event_id=eid, timeout=30)
        wait_for(
            lambda: len(_runs_of(flow, "item", "completed")) == 50, timeout=60, what="50 item runs"
        )
        time.sleep(0.3)

    assert run.status == RunStatus.COMPLETED and run.output == 50
    assert tries["after-send"] == 2
    items = _runs_of(flow, "item")
    assert len(items) == 50
    assert sorted(r.output for r in items) == list(range(50))


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
def test_timeouts_cancel_runs_that_start_or_finish_too_late(stack: Stack) -> None:
    flow = make_flow(stack)

    @flow.function(id="slow-finish", trigger=event("t/timeouts"), timeouts=Timeouts(finish="2s"))
    def slow_finish(ctx):  # type: ignore[no-untyped-def]
        ctx.step.sleep("long", "1h")

    @flow.function(id="late-start", trigger=event("t/late"), timeouts={"start": "1s"})
    def late_start(ctx):  # type: ignore[no-untyped-def]
        return "started"

    [late] = flow.send(Event(name="t/late"))  # no worker yet: it waits in the queue
    time.sleep(1.5)
    with worker(flow):
        [eid] = flow.send(Event(name="t/timeouts"))
        late_run = wait_for_run(flow, event_id=late, timeout=20)
        run = wait_for_run(flow, event_id=eid, timeout=20)

    assert late_run.status == RunStatus.CANCELLED and late_run.output is None
    assert run.status == RunStatus.CANCELLED
    assert run.ended_at is not None and (run.ended_at - run.created_at).total_seconds() < 6


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
def test_long_match_values_sharing_the_indexed_prefix_do_not_cross(stack: Stack) -> None:
    flow = make_flow(stack)
    prefix = "x" * 300  # longer than the indexed column: both share its content

    @flow.function(id="long-wait", trigger=event("t/long"))
    def long_wait(ctx):  # type: ignore[no-untyped-def]
        got = ctx.step.wait_for_event("w", event="t/long-done", match="data.ref", timeout="1m")
        return got.data["tag"] if got else None

    with worker(flow, concurrency=4):
        [a] = flow.send(Event(name="t/long", data={"ref": prefix + "A"}))
        [b] = flow.send(Event(name="t/long", data={"ref": prefix + "B"}))
        wait_for(lambda: len(_runs_of(flow, "long-wait", "waiting")) == 2, what="two waiting runs")
        flow.send(Event(name="t/long-done", data={"ref": prefix + "A", "tag": "for A"}))
        run_a = wait_for_run(flow, event_id=a)
        flow.send(Event(name="t/long-done", data={"ref": prefix + "B", "tag": "for B"}))
        run_b = wait_for_run(flow, event_id=b)

    assert (run_a.output, run_b.output) == ("for A", "for B")


@pytest.mark.parametrize("stack", ["embedded", "redis-postgres"], indirect=True)
def test_a_fan_out_of_1000_events_from_one_step_starts_1000_runs(stack: Stack) -> None:
    flow = make_flow(stack)

    @flow.function(id="big-fan", trigger=event("t/big-fan"))
    def big_fan(ctx):  # type: ignore[no-untyped-def]
        evs = [Event(name="t/big-item", data={"i": i}) for i in range(1000)]
        return len(ctx.step.send_event("items", evs))

    @flow.function(id="big-item", trigger=event("t/big-item"))
    def big_item(ctx):  # type: ignore[no-untyped-def]
        return ctx.event.data["i"]

    with worker(flow, concurrency=4):
        [eid] = flow.send(Event(name="t/big-fan"))
        assert wait_for_run(flow, event_id=eid, timeout=60).output == 1000
        wait_for(
            lambda: (
                len(flow.list_runs(function_id="big-item", status="completed", limit=2000)) == 1000
            ),
            timeout=180,
            interval=0.5,
            what="1,000 item runs",
        )

    items = flow.list_runs(function_id="big-item", limit=2000)
    assert sorted(r.output for r in items) == list(range(1000))
