"""Hook.carry and the reconciled hook (celeryflow/hooks.py), on a real worker: what a
hook carries where a run is created reaches every execution of it and of the runs it
invokes, a carry that fails is logged and carries nothing, and each reconciler pass
is told."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
from flowkit import make_flow
from services import Stack

from celeryflow import Event, Hook, RunStatus, event
from celeryflow.hooks import Reconciled, RunStarted
from celeryflow.reconciler import Reconciler
from celeryflow.testing import wait_for_run, worker

CURRENT = threading.local()


class Carrier(Hook):
    """Carries this thread's CURRENT.tag (a stand-in for a trace context)."""

    def __init__(self) -> None:
        self.started: dict[str, RunStarted] = {}
        self.passes: list[Reconciled] = []

    def carry(self) -> dict[str, str]:
        tag = getattr(CURRENT, "tag", None)
        return {"tag": tag} if tag else {}

    def run_started(self, info: RunStarted) -> None:
        self.started[info.run_id] = info
        # what the run's code and the runs it creates carry on
        CURRENT.tag = f"{info.context.get('tag')}>{info.function_id}"

    def reconciled(self, info: Reconciled) -> None:
        self.passes.append(info)


class BadCarrier(Hook):
    def carry(self) -> dict[str, Any]:
        return {"tag": 1}  # not a string


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
def test_what_a_hook_carries_reaches_the_run_and_its_child(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    carrier = Carrier()
    flow = make_flow(stack, hooks=[BadCarrier(), carrier])

    @flow.function(id="kid", trigger=event("carry/never"))
    def kid(ctx: Any) -> int:
        return 1

    @flow.function(id="parent", trigger=event("carry/go"))
    def parent(ctx: Any) -> int:
        return int(ctx.step.invoke("call", function="kid", data={}))

    CURRENT.tag = "sender"
    try:
        with caplog.at_level(logging.ERROR, "celeryflow.hooks"), worker(flow):
            [event_id] = flow.send(Event(name="carry/go"))
            run = wait_for_run(flow, event_id=event_id, timeout=60)
    finally:
        CURRENT.tag = None
    assert run.status == RunStatus.COMPLETED, run.error
    [child] = [i for i in carrier.started.values() if i.function_id == "kid"]
    started = carrier.started[run.id]
    assert started.context == {"tag": "sender"}
    assert started.created_at is not None and started.parent_run_id is None
    assert child.context == {"tag": "sender>parent"}
    assert child.parent_run_id == run.id
    assert "raised in carry" in caplog.text  # the bad carrier, logged; the good one kept


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
def test_each_reconciler_pass_is_told(stack: Stack) -> None:
    carrier = Carrier()
    flow = make_flow(stack, hooks=[carrier])
    Reconciler(flow).run_once()
    assert carrier.passes == [Reconciled(rung=0, recovered=0, slots=0)]
