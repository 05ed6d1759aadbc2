"""Inngest SDK conformance (issue 16) on a real worker, embedded stack.

Each test checks one behaviour the SDK's own function tests check, written anew
here: once on celeryflow's core API where the behaviour is core's, and once through
the facade (``celeryflow.compat.inngest``). One Flow, one worker for the module.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from celeryflow import Event, Flow, RunStatus, event
from celeryflow.compat import inngest
from celeryflow.compat.inngest import celery as inngest_celery
from celeryflow.testing import wait_for_run, worker

client = inngest.Inngest(app_id="conformance")
FUNCTIONS: list[inngest.Function[Any]] = []


def facade(fn_id: str, name: str) -> Any:
    """``@client.create_function`` on ``name``, collected for serve()."""

    def decorator(handler: Any) -> Any:
        function = client.create_function(fn_id=fn_id, trigger=inngest.TriggerEvent(event=name))(
            handler
        )
        FUNCTIONS.append(function)
        return function

    return decorator


def send(name: str, data: dict[str, Any] | None = None) -> str:
    [event_id] = client.send_sync(inngest.Event(name=name, data=data or {}))
    return event_id


# -- item 3: ctx.run_id inside a parallel branch is the run's id -----------------------


@facade("parallel-run-id", "conf/parallel-run-id")
def parallel_run_id(ctx: inngest.ContextSync) -> dict[str, Any]:
    ids = ctx.group.parallel(
        (
            lambda: ctx.step.run("a", lambda: ctx.run_id),
            lambda: ctx.step.run("b", lambda: ctx.run_id),
        )
    )
    return {"outer": ctx.run_id, "branches": list(ids)}


@facade("parallel-run-id-async", "conf/parallel-run-id-async")
async def parallel_run_id_async(ctx: inngest.Context) -> dict[str, Any]:
    async def branch() -> str:
        return str(ctx.run_id)

    ids = await ctx.group.parallel((branch, branch))
    return {"outer": ctx.run_id, "branches": list(ids)}


# -- item 7: a nested step fails the run, even under `except Exception` ----------------


@facade("nested-swallowed", "conf/nested")
def nested_swallowed(ctx: inngest.ContextSync) -> str:
    def outer() -> str:
        try:
            ctx.step.run("inner", lambda: "inner")
        except Exception:
            pass
        return "outer"

    try:
        ctx.step.run("outer", outer)
    except Exception:
        return "swallowed"
    return "completed"


@facade("nested-swallowed-async", "conf/nested-async")
async def nested_swallowed_async(ctx: inngest.Context) -> str:
    async def outer() -> str:
        try:
            await ctx.step.run("inner", lambda: "inner")
        except BaseException:  # even this: the step still fails the run
            pass
        return "outer"

    try:
        await ctx.step.run("outer", outer)
    except Exception:
        return "swallowed"
    return "completed"


def core_functions(flow: Flow) -> None:
    @flow.function(id="core-nested", trigger=event("conf/core-nested"), retries=3)
    def core_nested(ctx):  # type: ignore[no-untyped-def]
        def outer() -> str:
            try:
                ctx.step.sleep("inner-nap", "1s")
            except Exception:
                pass
            return "outer"

        try:
            ctx.step.run("outer", outer)
        except Exception:
            return "swallowed"
        return "completed"

    @flow.function(id="core-parallel-run-id", trigger=event("conf/core-parallel-run-id"))
    def core_parallel_run_id(ctx):  # type: ignore[no-untyped-def]
        ids = ctx.step.parallel(
            "fan",
            [
                lambda: ctx.step.run("a", lambda: ctx.run_id),
                lambda: ctx.run_id,
            ],
        )
        return {"outer": ctx.run_id, "branches": ids}


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flow]:
    tmp = tmp_path_factory.mktemp("conformance")
    app = Celery("conformance", broker=f"celeryflow+sqlite:///{tmp}/broker.db")
    app.conf.task_default_queue = f"conformance-{tmp.name}"
    app.conf.worker_hijack_root_logger = False
    flow = Flow(
        app,
        store=f"sqlite:///{tmp}/store.db",
        retry_base="50ms",
        reconcile_interval="1s",
        redeliver_after="5s",
    )
    core_functions(flow)
    assert inngest_celery.serve(app, client, FUNCTIONS) is flow
    with worker(flow, concurrency=6):
        yield flow


@pytest.mark.parametrize("name", ["conf/parallel-run-id", "conf/parallel-run-id-async"])
def test_facade_run_id_in_parallel_is_the_runs(flow: Flow, name: str) -> None:
    run = wait_for_run(flow, event_id=send(name), timeout=60)
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"outer": run.id, "branches": [run.id, run.id]}


def test_core_run_id_in_parallel_is_the_runs(flow: Flow) -> None:
    [event_id] = flow.send(Event(name="conf/core-parallel-run-id"))
    run = wait_for_run(flow, event_id=event_id, timeout=60)
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"outer": run.id, "branches": [run.id, run.id]}
    branches = [r for r in flow.list_runs(function_id=run.function_id) if r.parent_run_id]
    assert len(branches) == 2 and run.id not in {b.id for b in branches}


def _assert_nested_failure(run: Any, outer: str, inner: str) -> None:
    assert run.status == RunStatus.FAILED, run.output
    assert run.error["type"] == "NestedStepError"
    message = run.error["message"]
    assert "Nested steps are not supported" in message
    assert repr(outer) in message and repr(inner) in message


@pytest.mark.parametrize("name", ["conf/nested", "conf/nested-async"])
def test_facade_nested_step_fails_the_run_despite_except(flow: Flow, name: str) -> None:
    run = wait_for_run(flow, event_id=send(name), timeout=60)
    _assert_nested_failure(run, "outer", "inner")


def test_core_nested_step_fails_the_run_at_once(flow: Flow) -> None:
    [event_id] = flow.send(Event(name="conf/core-nested"))
    run = wait_for_run(flow, event_id=event_id, timeout=60)
    _assert_nested_failure(run, "outer", "inner-nap")
    assert run.attempt == 0, "a nested step is a bug: no retry"
