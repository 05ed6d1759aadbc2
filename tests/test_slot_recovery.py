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
