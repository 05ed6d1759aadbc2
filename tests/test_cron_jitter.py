"""Cron ``jitter`` (Inngest's ``TriggerCron(jitter=)``): each slot's run starts a
random delay of up to ``jitter`` after the slot; a real worker fires the slots."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from celeryflow import Flow, RunStatus, cron
from celeryflow.compat import inngest
from celeryflow.compat.inngest import celery as inngest_celery
from celeryflow.runs import Run
from celeryflow.testing import wait_for, worker

EVERY_2S = "* * * * * */2"
client = inngest.Inngest(app_id="jitter")


@client.create_function(fn_id="sdk", trigger=inngest.TriggerCron(cron=EVERY_2S, jitter="1h"))
def sdk_spread(ctx: inngest.ContextSync) -> str:
    return "ran"


def define(flow: Flow) -> None:
    @flow.function(id="spread", trigger=cron(EVERY_2S, jitter="1h"))
    def spread(ctx):  # type: ignore[no-untyped-def]
        return "ran"

    @flow.function(id="soon", trigger=cron(EVERY_2S, jitter="1s"))
    def soon(ctx):  # type: ignore[no-untyped-def]
        return ctx.event.data["scheduled_at"]


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flow]:
    tmp = tmp_path_factory.mktemp("jitter")
    app = Celery("jitter", broker=f"celeryflow+sqlite:///{tmp}/broker.db")
    app.conf.task_default_queue = f"jitter-{tmp.name}"
    app.conf.worker_hijack_root_logger = False
    flow = Flow(app, store=f"sqlite:///{tmp}/store.db", reconcile_interval="500ms")
    define(flow)
    inngest_celery.serve(app, client, [sdk_spread])
    with worker(flow, concurrency=4):
        yield flow


def runs_of(flow: Flow, function_id: str, at_least: int) -> list[Run]:
    def enough() -> list[Run] | None:
        found = flow.list_runs(function_id=function_id)
        return found if len(found) >= at_least else None

    return wait_for(enough, timeout=30, what=f"{at_least} runs of {function_id}")


@pytest.mark.parametrize("function_id", ["spread", "jitter-sdk"])
def test_each_slot_starts_up_to_jitter_later(flow: Flow, function_id: str) -> None:
    runs = runs_of(flow, function_id, at_least=2)
    delays = []
    for run in runs:
        assert run.status == RunStatus.QUEUED, "a jittered run started at its slot"
        assert run.wake_at is not None
        delay = run.wake_at - run.created_at
        assert datetime.timedelta(0) <= delay <= datetime.timedelta(hours=1)
        delays.append(delay)
    assert len(set(delays)) == len(delays), "every slot gets its own random delay"
    assert max(delays) > datetime.timedelta(seconds=5), delays  # about 1 in 360**2 to fail


def test_a_short_jitter_still_runs_each_slot_on_its_wake(flow: Flow) -> None:
    def finished() -> list[Run] | None:
        done = [r for r in flow.list_runs(function_id="soon") if r.status == RunStatus.COMPLETED]
        return done if len(done) >= 2 else None

    for run in wait_for(finished, timeout=30, what="two jittered runs of 'soon' completed"):
        slot = datetime.datetime.fromisoformat(run.output)
        assert run.started_at is not None
        late: Any = run.started_at - slot
        # the jitter (up to 1 s) plus the worker's pick-up; never before the slot
        assert datetime.timedelta(0) <= late < datetime.timedelta(seconds=6), late
