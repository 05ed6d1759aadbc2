"""Inngest SDK conformance (issue 16) on a real worker, embedded stack.

Each test checks one behaviour the SDK's own function tests check, written anew
here: once on celeryflow's core API where the behaviour is core's, and once through
the facade (``celeryflow.compat.inngest``). One Flow, one worker for the module.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from celeryflow import CancelOn, ConfigError, Event, EventError, Flow, RunStatus, event
from celeryflow.compat import inngest
from celeryflow.compat.inngest import celery as inngest_celery
from celeryflow.compat.inngest import experimental
from celeryflow.events import FAILED_EVENT
from celeryflow.testing import wait_for, wait_for_run, worker

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


# -- item 6: inngest.experimental -------------------------------------------------------

calls: Counter[str] = Counter()


@experimental.step("greet")
def greet(name: str) -> dict[str, Any]:
    calls["greet"] += 1
    return {"hello": name, "empty": None}


@experimental.step("greet")
async def greet_async(name: str) -> dict[str, Any]:
    calls["greet-async"] += 1
    return {"hello": name, "empty": None}


@facade("step-decorator", "conf/step-decorator")
def step_decorator(ctx: inngest.ContextSync) -> dict[str, Any]:
    greeting = greet("Ada")
    ctx.step.sleep("nap", 50)  # a replay: the decorated step is memoized
    step = experimental.get_step_context()
    assert isinstance(step, inngest.StepSync)
    counted = step.run("count", lambda: calls.update(["count"]) or calls["count"])
    return {"greeting": greeting, "same_step": step is ctx.step, "counted": counted}


@facade("step-decorator-async", "conf/step-decorator-async")
async def step_decorator_async(ctx: inngest.Context) -> dict[str, Any]:
    greeting = await greet_async("Ada")
    await ctx.step.sleep("nap", 50)
    step = experimental.get_step_context()
    assert isinstance(step, inngest.Step)
    return {"greeting": greeting, "same_step": step is ctx.step}


@facade("ai-infer", "conf/ai-infer")
def ai_infer(ctx: inngest.ContextSync) -> Any:
    return ctx.step.ai.infer("ask", adapter=None, body={})


# -- item 8: edges ---------------------------------------------------------------------

CRAZY = "%$^&*(_+{|:<?☃️"


@facade(f"crazy-id{CRAZY}", "conf/crazy-id")
def crazy_id(ctx: inngest.ContextSync) -> str:
    ctx.step.run(CRAZY, lambda: None)
    return "done"


executions: Counter[str] = Counter()
executions_lock = threading.Lock()


def first_time(key: str) -> bool:
    with executions_lock:
        executions[key] += 1
        return executions[key] == 1


@facade("branch-disappears", "conf/branch-disappears")
def branch_disappears(ctx: inngest.ContextSync) -> None:
    steps: tuple[Any, ...] = (
        lambda: ctx.step.run("1a", lambda: None),
        lambda: ctx.step.run("1b", lambda: None),
    )
    if first_time(ctx.run_id):  # the parent's first execution; its branches see two
        steps += (lambda: ctx.step.run("1c", lambda: None),)
    ctx.group.parallel(steps)
    ctx.step.run("after", lambda: None)


# -- item 4 (facade): invoke timeout, non-JSON output, Event.from_raw ------------------


@client.create_function(fn_id="invokee-sleeps", trigger=inngest.TriggerEvent(event="conf/never"))
def invokee_sleeps(ctx: inngest.ContextSync) -> None:
    ctx.step.sleep("sleep", 60_000)


FUNCTIONS.append(invokee_sleeps)


@facade("invoke-timeout", "conf/invoke-timeout")
def invoke_timeout(ctx: inngest.ContextSync) -> None:
    try:
        ctx.step.invoke("invoke", function=invokee_sleeps, timeout=datetime.timedelta(seconds=1))
    except inngest.StepError as err:
        assert err.name == "InngestInvokeTimeoutError", err.name
        assert err.message == "Timed out waiting for invoked function to complete"
        raise


class Opaque:
    pass


@facade("unserializable-step", "conf/unserializable-step")
def unserializable_step(ctx: inngest.ContextSync) -> None:
    try:
        ctx.step.run("step_1", Opaque)
    except inngest.StepError:
        pass  # not a StepError: it fails the run


@facade("unserializable-output", "conf/unserializable-output")
async def unserializable_output(ctx: inngest.Context) -> Any:
    return Opaque()


@facade("step-appears", "conf/step-appears")
def step_appears(ctx: inngest.ContextSync) -> None:
    if not first_time(ctx.run_id):  # the branches (and the parent's later executions)
        ctx.step.run("unexpected", lambda: None)
    ctx.group.parallel(
        (
            lambda: ctx.step.run("parallel_1", lambda: None),
            lambda: ctx.step.run("parallel_2", lambda: None),
        )
    )


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

    @flow.function(id="core-wait-match", trigger=event("conf/order"))
    def core_wait_match(ctx):  # type: ignore[no-untyped-def]
        found = ctx.step.wait_for_event(
            "approval", event="conf/approved", match="data.order_id", timeout="2s", lookback="1m"
        )
        return None if found is None else found.data

    @flow.function(
        id="core-cancel-match",
        trigger=event("conf/cancellable"),
        cancel_on=[CancelOn(event="conf/cancel", match="data.order_id")],
    )
    def core_cancel_match(ctx):  # type: ignore[no-untyped-def]
        ctx.step.sleep("nap", "2s")
        return "finished"

    @flow.function(id="core-dup", trigger=event("conf/dup"))
    def core_dup(ctx):  # type: ignore[no-untyped-def]
        return ctx.event.data

    @flow.function(id="core-branch-gone", trigger=event("conf/core-branch-gone"), retries=0)
    def core_branch_gone(ctx):  # type: ignore[no-untyped-def]
        calls = [lambda: ctx.step.run("a", lambda: 1), lambda: ctx.step.run("b", lambda: 2)]
        if first_time(ctx.run_id):  # the parent's first execution; its branches see two
            calls.append(lambda: ctx.step.run("c", lambda: 3))
        return ctx.step.parallel("fan", calls)  # no step after it

    # item 4: a cancel_on cancel cascades to what the run started, whoever sent it
    @flow.function(id="core-cascade-child", trigger=event("conf/never"))
    def core_cascade_child(ctx):  # type: ignore[no-untyped-def]
        ctx.step.sleep("long", "60s")

    @flow.function(
        id="core-cascade",
        trigger=event("conf/cascade"),
        cancel_on=[
            CancelOn(event="conf/cascade-stop", match="data.key"),
            CancelOn(event=FAILED_EVENT, if_="async.data.event.data.key == event.data.key"),
        ],
    )
    def core_cascade(ctx):  # type: ignore[no-untyped-def]
        return ctx.step.parallel(
            "fan",
            [
                lambda: ctx.step.sleep("long", "60s"),
                lambda: ctx.step.invoke("kid", function="core-cascade-child"),
            ],
        )

    @flow.function(id="core-cascade-sender", trigger=event("conf/cascade-sender"))
    def core_cascade_sender(ctx):  # type: ignore[no-untyped-def]
        key = ctx.event.data["key"]
        ctx.step.send_event("stop", {"name": "conf/cascade-stop", "data": {"key": key}})

    @flow.function(id="core-cascade-failer", trigger=event("conf/cascade-failer"), retries=0)
    def core_cascade_failer(ctx):  # type: ignore[no-untyped-def]
        raise RuntimeError("failing, so that function.failed is sent")

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


# -- core semantics: match, Event.ts, duplicate ids in one send -----------------------


def test_match_on_a_field_both_events_lack_does_not_pair_them(flow: Flow) -> None:
    # before the wait (found by lookback) and while it waits: neither pairs
    flow.send(Event(name="conf/approved", data={"note": "early"}))
    [event_id] = flow.send(Event(name="conf/order", data={}))
    run = wait_for_run(flow, event_id=event_id, status=RunStatus.WAITING, timeout=60)
    flow.send(Event(name="conf/approved", data={"note": "late"}))
    flow.send(Event(name="conf/approved", data={"order_id": None}))
    run = wait_for_run(flow, run.id, timeout=60)
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output is None, "an event without order_id paired with a run without one"


def test_match_still_pairs_equal_values(flow: Flow) -> None:
    [event_id] = flow.send(Event(name="conf/order", data={"order_id": 7}))
    run = wait_for_run(flow, event_id=event_id, status=RunStatus.WAITING, timeout=60)
    flow.send(Event(name="conf/approved", data={"order_id": 7, "ok": True}))
    run = wait_for_run(flow, run.id, timeout=60)
    assert run.output == {"order_id": 7, "ok": True}


@pytest.mark.parametrize("sender", ["conf/cascade-sender", "conf/cascade-failer"])
def test_a_cancel_on_cancel_from_inside_a_run_cascades_to_children(flow: Flow, sender: str) -> None:
    """A run's step.send_event (or its failure event) that matches another run's
    cancel_on cancels that run and what it started (its parallel branches, the
    child a branch invoked), as Flow.send's and flow.cancel do."""
    key = sender.rsplit("-", 1)[-1]
    [event_id] = flow.send(Event(name="conf/cascade", data={"key": key}))
    parent = wait_for_run(flow, event_id=event_id, status=RunStatus.WAITING, timeout=60)

    def started() -> list[Any]:
        kids = [r for r in flow.list_runs(function_id="core-cascade") if r.branch is not None]
        mine = [r for r in kids if r.parent_run_id == parent.id]
        grandkids = [
            r
            for r in flow.list_runs(function_id="core-cascade-child")
            if r.parent_run_id in {k.id for k in mine}
        ]
        parked = [r for r in [*mine, *grandkids] if r.status != RunStatus.QUEUED]
        return parked if len(mine) == 2 and len(grandkids) == 1 and len(parked) == 3 else []

    descendants = wait_for(started, timeout=60, what="branches and the invoked child parked")
    flow.send(Event(name=sender, data={"key": key}))

    assert wait_for_run(flow, parent.id, timeout=60).status == RunStatus.CANCELLED
    for run in descendants:
        assert wait_for_run(flow, run.id, timeout=60).status == RunStatus.CANCELLED, run


def test_cancel_on_match_ignores_an_event_lacking_the_field(flow: Flow) -> None:
    [lacking] = flow.send(Event(name="conf/cancellable", data={}))
    [keyed] = flow.send(Event(name="conf/cancellable", data={"order_id": 1}))
    for event_id in (lacking, keyed):
        wait_for_run(flow, event_id=event_id, status=RunStatus.SLEEPING, timeout=60)
    flow.send(Event(name="conf/cancel", data={}))
    flow.send(Event(name="conf/cancel", data={"order_id": 1}))
    assert wait_for_run(flow, event_id=keyed, timeout=60).status == RunStatus.CANCELLED
    run = wait_for_run(flow, event_id=lacking, timeout=60)
    assert run.status == RunStatus.COMPLETED and run.output == "finished"


@pytest.mark.parametrize("ts", [True, "12", 12.5])
def test_event_ts_is_a_strict_int(flow: Flow, ts: Any) -> None:
    with pytest.raises(EventError, match=r"event #1 is invalid: ts: Input should be a valid int"):
        flow.send([{"name": "conf/dup", "id": f"ts-{ts}"}, {"name": "conf/dup", "ts": ts}])
    assert flow.list_runs(event_id=f"ts-{ts}") == [], "nothing of a refused send is written"
    with pytest.raises(ConfigError, match="ts"):
        inngest.Event(name="conf/dup", ts=ts)


def test_event_ts_takes_an_int_and_a_datetime(flow: Flow) -> None:
    at = datetime.datetime(2024, 5, 1, tzinfo=datetime.timezone.utc)
    [first, second] = flow.send(
        [Event(name="conf/dup", ts=1_700_000_000_000), Event(name="conf/dup", ts=at)]
    )
    assert wait_for_run(flow, event_id=first, timeout=60).status == RunStatus.COMPLETED
    assert wait_for_run(flow, event_id=second, timeout=60).status == RunStatus.COMPLETED


def test_duplicate_ids_in_one_send_keep_the_first(flow: Flow) -> None:
    ids = flow.send(
        [
            Event(name="conf/dup", id="dup-core", data={"n": 1}),
            Event(name="conf/dup", data={"n": 2}),
            Event(name="conf/dup", id="dup-core", data={"n": 3}),
        ]
    )
    assert len(ids) == 3 and ids[0] == ids[2] == "dup-core"
    run = wait_for_run(flow, event_id="dup-core", timeout=60)
    assert run.output == {"n": 1}
    wait_for_run(flow, event_id=ids[1], timeout=60)
    assert len(flow.list_runs(event_id="dup-core")) == 1


def test_facade_duplicate_ids_in_one_send_keep_the_first(flow: Flow) -> None:
    ids = client.send_sync(
        [
            inngest.Event(name="conf/dup", id="dup-facade", data={"n": 1}),
            inngest.Event(name="conf/dup", id="dup-facade", data={"n": 2}),
        ]
    )
    assert ids == ["dup-facade", "dup-facade"]
    run = wait_for_run(flow, event_id="dup-facade", timeout=60)
    assert run.output == {"n": 1}
    wait_for(lambda: flow.list_runs(event_id="dup-facade"), timeout=10)
    assert len(flow.list_runs(event_id="dup-facade")) == 1


# -- item 6: inngest.experimental -------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "counter"),
    [("conf/step-decorator", "greet"), ("conf/step-decorator-async", "greet-async")],
)
def test_experimental_step_decorator_and_step_context(flow: Flow, name: str, counter: str) -> None:
    before = calls[counter]
    run = wait_for_run(flow, event_id=send(name), timeout=60)
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output["greeting"] == {"hello": "Ada", "empty": None}
    assert run.output["same_step"] is True
    assert calls[counter] == before + 1, "the decorated step ran again on replay"
    assert [s.name for s in run.steps][:2] == ["greet", "nap"]


def test_experimental_step_outside_a_function_is_a_plain_call() -> None:
    before = calls["greet"]
    assert greet("Bo") == {"hello": "Bo", "empty": None}
    assert calls["greet"] == before + 1
    with pytest.raises(LookupError):
        experimental.get_step_context()


def test_experimental_ai_is_not_supported_naming_itself(flow: Flow) -> None:
    with pytest.raises(inngest.NotSupportedError, match=r"inngest\.experimental\.ai\.openai"):
        experimental.ai.openai  # noqa: B018
    run = wait_for_run(flow, event_id=send("conf/ai-infer"), timeout=60)
    assert run.status == RunStatus.FAILED
    assert run.error["type"] == "NotSupportedError"
    assert "step.ai.infer is not supported" in run.error["message"]


# -- item 8: edges ---------------------------------------------------------------------


def test_function_and_step_ids_with_any_printable_character(flow: Flow) -> None:
    run = wait_for_run(flow, event_id=send("conf/crazy-id"), timeout=60)
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.function_id == f"conformance-crazy-id{CRAZY}"
    assert [s.name for s in run.steps] == [CRAZY]
    with pytest.raises(ConfigError, match="control characters"):
        flow.function(id="bad\nid", trigger=event("conf/never"))(lambda ctx: None)


@pytest.mark.parametrize("sync", [True, False])
def test_send_with_an_invalid_event_sends_those_before_it(flow: Flow, sync: bool) -> None:
    events = [
        inngest.Event(name="conf/dup", id=f"ok-{sync}", data={"n": 1}),
        inngest.Event(name=""),
        inngest.Event(name="conf/dup", id=f"after-{sync}"),
    ]
    with pytest.raises(inngest.SendEventsError, match=r"event #1 is invalid: name") as caught:
        if sync:
            client.send_sync(events)
        else:
            asyncio.run(client.send(events))
    assert caught.value.ids == [f"ok-{sync}"]
    assert wait_for_run(flow, event_id=f"ok-{sync}", timeout=60).output == {"n": 1}
    assert flow.list_runs(event_id=f"after-{sync}") == []


def test_a_parallel_step_that_disappears_on_replay_fails_the_run(flow: Flow) -> None:
    run = wait_for_run(flow, event_id=send("conf/branch-disappears"), timeout=60)
    assert run.status == RunStatus.FAILED
    assert run.error["type"] == "StepUnexpectedError"
    # as the SDK: the branch whose callable is gone goes on looking for it, and the
    # next step it finds fails it, named
    assert run.error["message"].startswith('found step "after" when targeting a different step')
    assert "after" not in [s.name for s in run.steps]


def test_a_branch_that_returns_while_looking_for_its_callable_fails_the_run(
    flow: Flow,
) -> None:
    [event_id] = flow.send(Event(name="conf/core-branch-gone"))
    run = wait_for_run(flow, event_id=event_id, timeout=60)
    assert run.status == RunStatus.FAILED, run.output
    assert run.error["type"] == "StepUnexpectedError", run.error
    assert "returned while looking for step.parallel('fan') branch 2" in run.error["message"]


# -- item 4 (facade): invoke timeout, non-JSON output, Event.from_raw ------------------


def test_invoke_timeout_is_inngest_invoke_timeout_error(flow: Flow) -> None:
    run = wait_for_run(flow, event_id=send("conf/invoke-timeout"), timeout=60)
    assert run.status == RunStatus.FAILED
    assert run.error["type"] == "InngestInvokeTimeoutError", run.error
    assert run.error["message"] == "Timed out waiting for invoked function to complete"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("conf/unserializable-step", '"step_1" returned unserializable data'),
        ("conf/unserializable-output", "returned unserializable data"),
    ],
)
def test_non_json_output_is_output_unserializable_error(
    flow: Flow, name: str, message: str
) -> None:
    run = wait_for_run(flow, event_id=send(name), timeout=60)
    assert run.status == RunStatus.FAILED
    assert run.error["type"] == "OutputUnserializableError", run.error
    assert run.error["message"] == message
    assert run.attempt == 0, "not retried"


def test_event_from_raw() -> None:
    raw = {"name": "a/b", "data": {"x": 1}, "id": "e1", "ts": 12}
    for source in (raw, json.dumps(raw), json.dumps(raw).encode()):
        parsed = inngest.Event.from_raw(source)
        assert isinstance(parsed, inngest.Event)
        assert (parsed.name, dict(parsed.data), parsed.id, parsed.ts) == ("a/b", {"x": 1}, "e1", 12)
    for bad in ({"data": {}}, {"name": "a", "ts": "12"}, "not json", [1]):
        assert isinstance(inngest.Event.from_raw(bad), Exception)


def test_a_step_that_appears_before_a_parallel_step_on_replay_fails_the_run(
    flow: Flow,
) -> None:
    run = wait_for_run(flow, event_id=send("conf/step-appears"), timeout=60)
    assert run.status == RunStatus.FAILED
    assert run.error["type"] == "StepUnexpectedError"
    assert run.error["message"].startswith(
        'found step "unexpected" when targeting a different step'
    )
