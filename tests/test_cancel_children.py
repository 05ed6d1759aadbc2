"""Cancelling a run cancels what it started: its ``step.invoke`` children and its
``step.parallel`` branches, and theirs in turn, whichever way it was cancelled
(``flow.cancel``, ``flow.cancel_runs``, the CLI, a ``cancel_on`` event, a
``Singleton(mode="cancel")``, its ``Timeouts``); ``keep_children=True`` (CLI
``--keep-children``) leaves them running. A real worker on the embedded stack.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from click.testing import CliRunner

from celeryflow import CancelOn, Event, Flow, RunStatus, Singleton, Timeouts, event
from celeryflow.cli import main
from celeryflow.runs import Run
from celeryflow.testing import wait_for, wait_for_run, worker

PARKED = {RunStatus.SLEEPING, RunStatus.WAITING}


def define(flow: Flow) -> None:
    @flow.function(id="leaf", retries=0)
    def leaf(ctx):  # type: ignore[no-untyped-def]
        ctx.step.sleep("long", "60s")
        return "leaf done"

    @flow.function(id="middle", retries=0)
    def middle(ctx):  # type: ignore[no-untyped-def]
        return ctx.step.invoke("call-leaf", function="leaf")

    @flow.function(id="short", retries=0)
    def short(ctx):  # type: ignore[no-untyped-def]
        ctx.step.sleep("brief", "1s")
        return "short done"

    @flow.function(id="root", trigger=event("cc/root"), retries=0)
    def root(ctx):  # type: ignore[no-untyped-def]
        return ctx.step.parallel(
            "fan",
            [
                lambda: ctx.step.invoke("call-middle", function="middle"),
                lambda: ctx.step.sleep("nap", "60s"),
            ],
        )

    @flow.function(id="keeper", trigger=event("cc/keeper"), retries=0)
    def keeper(ctx):  # type: ignore[no-untyped-def]
        return ctx.step.invoke("call-short", function="short")

    @flow.function(
        id="stoppable",
        trigger=event("cc/stoppable"),
        retries=0,
        cancel_on=[CancelOn(event="cc/stop", match="data.k")],
    )
    def stoppable(ctx):  # type: ignore[no-untyped-def]
        return ctx.step.invoke("call-leaf", function="leaf")

    @flow.function(id="single", trigger=event("cc/single"), singleton=Singleton(mode="cancel"))
    def single(ctx):  # type: ignore[no-untyped-def]
        if ctx.event.data.get("first"):
            return ctx.step.invoke("call-leaf", function="leaf")
        return "second"

    @flow.function(
        id="bounded", trigger=event("cc/bounded"), retries=0, timeouts=Timeouts(finish="2s")
    )
    def bounded(ctx):  # type: ignore[no-untyped-def]
        return ctx.step.invoke("call-leaf", function="leaf")


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flow]:
    tmp = tmp_path_factory.mktemp("cancel-children")
    app = Celery("cancel-children", broker=f"celeryflow+sqlite:///{tmp}/broker.db")
    app.conf.task_default_queue = f"cancel-children-{tmp.name}"
    app.conf.worker_hijack_root_logger = False
    flow = Flow(app, store=f"sqlite:///{tmp}/store.db", reconcile_interval="500ms")
    define(flow)
    with worker(flow, concurrency=4):
        yield flow


def children(flow: Flow, parent: str) -> list[Run]:
    return [
        r
        for fn in ("leaf", "middle", "short", "root")
        for r in flow.list_runs(function_id=fn)
        if r.parent_run_id == parent
    ]


def tree(flow: Flow, root_id: str, size: int) -> list[Run]:
    """The runs under ``root_id`` once ``size`` of them are parked."""

    def parked() -> list[Run] | None:
        found: list[Run] = []
        frontier = [root_id]
        while frontier:
            kids = [k for parent in frontier for k in children(flow, parent)]
            found += kids
            frontier = [k.id for k in kids]
        ready = [r for r in found if r.status in PARKED]
        return found if len(ready) == size else None

    return wait_for(parked, timeout=30, what=f"{size} parked runs under {root_id}")


def statuses(flow: Flow, runs: list[Run]) -> dict[str, RunStatus]:
    return {
        r.function_id + (f"#{r.branch}" if r.branch is not None else ""): flow.get_run(r.id).status
        for r in runs
    }


def all_cancelled(flow: Flow, runs: list[Run]) -> dict[str, RunStatus]:
    def done() -> dict[str, RunStatus] | None:
        got = statuses(flow, runs)
        return got if set(got.values()) == {RunStatus.CANCELLED} else None

    return wait_for(done, timeout=15, what="every descendant cancelled")


def start(flow: Flow, name: str, data: dict[str, Any] | None = None) -> str:
    [event_id] = flow.send(Event(name=name, data=data or {}))
    return wait_for_run(flow, event_id=event_id, status=RunStatus.WAITING, timeout=30).id


def test_cancel_cascades_to_invoke_children_and_branches(flow: Flow) -> None:
    root = start(flow, "cc/root")
    # two branches; branch 0 invoked middle, which invoked leaf
    runs = tree(flow, root, size=4)
    assert sorted(statuses(flow, runs)) == ["leaf", "middle", "root#0", "root#1"]
    assert flow.cancel(root) is True
    assert flow.get_run(root).status == RunStatus.CANCELLED
    all_cancelled(flow, runs)


def test_keep_children_leaves_them_running(flow: Flow) -> None:
    parent = start(flow, "cc/keeper")
    [child] = tree(flow, parent, size=1)
    assert flow.cancel(parent, keep_children=True) is True
    done = wait_for_run(flow, child.id, timeout=30)
    assert done.status == RunStatus.COMPLETED and done.output == "short done"
    assert flow.get_run(parent).status == RunStatus.CANCELLED


def test_cancel_on_event_cascades(flow: Flow) -> None:
    parent = start(flow, "cc/stoppable", {"k": 1})
    runs = tree(flow, parent, size=1)
    flow.send(Event(name="cc/stop", data={"k": 1}))
    assert wait_for_run(flow, parent, timeout=15).status == RunStatus.CANCELLED
    all_cancelled(flow, runs)


def test_singleton_cancel_cascades(flow: Flow) -> None:
    first = start(flow, "cc/single", {"first": True})
    runs = tree(flow, first, size=1)
    [second] = flow.send(Event(name="cc/single", data={}))
    assert wait_for_run(flow, event_id=second, timeout=15).output == "second"
    assert flow.get_run(first).status == RunStatus.CANCELLED
    all_cancelled(flow, runs)


def test_timeouts_cascade(flow: Flow) -> None:
    parent = start(flow, "cc/bounded")
    runs = tree(flow, parent, size=1)
    assert wait_for_run(flow, parent, timeout=15).status == RunStatus.CANCELLED
    all_cancelled(flow, runs)


def test_cancel_runs_and_the_cli_cascade_unless_kept(flow: Flow, tmp_path: Path) -> None:
    root = start(flow, "cc/root")
    runs = tree(flow, root, size=4)
    # the run and its branch waiting on middle: branches are runs of the same function
    assert flow.cancel_runs(function_id="root", status="waiting") == 2
    all_cancelled(flow, runs)

    kept = start(flow, "cc/keeper")
    [child] = tree(flow, kept, size=1)
    result = CliRunner().invoke(
        main, ["cancel", "--store", flow.store.url, kept, "--keep-children"]
    )
    assert result.exit_code == 0, result.output
    assert wait_for_run(flow, child.id, timeout=30).status == RunStatus.COMPLETED

    cascaded = start(flow, "cc/keeper")
    [child] = tree(flow, cascaded, size=1)
    result = CliRunner().invoke(main, ["cancel", "--store", flow.store.url, cascaded])
    assert result.exit_code == 0, result.output
    assert wait_for_run(flow, child.id, timeout=15).status == RunStatus.CANCELLED
