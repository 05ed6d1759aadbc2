"""Runs waiting for a concurrency slot are never polled; the reconciler's slot pass
is what starts them when their doorbell was lost (issue 5)."""

from __future__ import annotations

import pytest
from flowkit import make_flow
from services import Stack

from celeryflow import Concurrency, Event, RunStatus, event
from celeryflow.testing import wait_for, worker


@pytest.mark.parametrize("stack", ["embedded", "redis-postgres"], indirect=True)
def test_the_reconciler_starts_slot_waiters_whose_doorbells_were_lost(stack: Stack) -> None:
    flow = make_flow(stack)

    @flow.function(id="limited-lost", trigger=event("t/lost"), concurrency=Concurrency(limit=2))
    def limited_lost(ctx):  # type: ignore[no-untyped-def]
        return ctx.step.run("work", lambda: ctx.event.data["n"])

    flow.send([Event(name="t/lost", data={"n": n}) for n in range(5)])
    purged = flow.app.control.purge()  # the broker loses every doorbell sent so far
    assert purged >= 1
    runs = flow.list_runs(function_id="limited-lost")
    assert len(runs) == 5 and all(r.status == RunStatus.QUEUED for r in runs)

    with worker(flow, concurrency=4):
        done = wait_for(
            lambda: len(flow.list_runs(function_id="limited-lost", status="completed")) == 5,
            timeout=30,
            what="the reconciler to start the parked runs",
        )

    assert done
    outputs = sorted(r.output for r in flow.list_runs(function_id="limited-lost"))
    assert outputs == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("stack", ["embedded", "redis-postgres"], indirect=True)
def test_a_slot_doorbell_whose_run_was_taken_first_rings_the_next_in_line(stack: Stack) -> None:
    """A run at the end of a hand-over chain frees its slot and rings the run first in
    line; another run's end may hand that run its slot first. The doorbell then finds
    its run held or ended, and must ring whoever is next, or the freed slot idles until
    the reconciler's slot pass (here a minute away)."""
    flow = make_flow(stack, reconcile_interval="60s")

    @flow.function(id="limited-taken", trigger=event("t/taken"), concurrency=Concurrency(limit=1))
    def limited_taken(ctx):  # type: ignore[no-untyped-def]
        return ctx.step.run("work", lambda: ctx.event.data["n"])

    flow.send(Event(name="t/taken", data={"n": 0}))
    assert flow.app.control.purge() >= 1
    [first] = [r.id for r in flow.list_runs(function_id="limited-taken")]
    flow.doorbell.run_inline([first])  # it ends with no one in line: nothing handed over
    assert flow.get_run(first).status == RunStatus.COMPLETED
    flow.send(Event(name="t/taken", data={"n": 1}))
    assert flow.app.control.purge() >= 1  # the second run's own doorbell is lost
    [second] = [r.id for r in flow.list_runs(function_id="limited-taken") if r.id != first]
    assert flow.get_run(second).status == RunStatus.QUEUED

    with worker(flow, concurrency=2):
        flow.doorbell.ring([first])  # the slot's doorbell, arriving after its run ended
        wait_for(
            lambda: flow.get_run(second).status == RunStatus.COMPLETED,
            timeout=15,
            what="the run next in line to take the free slot (the reconciler is 60 s away)",
        )
    assert flow.get_run(second).output == 1
