"""The Inngest Python SDK's function cases (``tests/test_inngest/test_function/cases``
of inngest-py) that no other test here covered, written anew against the facade and
run on a real worker. docs/conformance.md lists every case and the test for it.

One app, one worker, one client; each function records what it saw in ``seen``
(the worker is a thread of this process).
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any, ClassVar, Generic, TypeVar

import pydantic
import pytest
from celery import Celery

from celeryflow import Flow, RunStatus
from celeryflow.compat import inngest
from celeryflow.compat.inngest import celery as inngest_celery
from celeryflow.runs import Run
from celeryflow.testing import wait_for, wait_for_run, worker

client = inngest.Inngest(app_id="cases")
FUNCTIONS: list[inngest.Function[Any]] = []
seen: dict[str, Any] = {}
counts: Counter[str] = Counter()
lock = threading.Lock()


def count(key: str) -> int:
    with lock:
        counts[key] += 1
        return counts[key]


def case(fn_id: str, **options: Any) -> Any:
    def decorator(handler: Any) -> Any:
        options.setdefault("retries", 0)
        options.setdefault("trigger", inngest.TriggerEvent(event=f"case/{fn_id}"))
        function = client.create_function(fn_id=fn_id, **options)(handler)
        FUNCTIONS.append(function)
        return function

    return decorator


# -- steps, arguments, outputs -------------------------------------------------------------


@case("async-fn-sync-callback")
async def async_fn_sync_callback(ctx: inngest.Context) -> Any:
    return await ctx.step.run("step_1", lambda: "hi")


@case("two-steps")
def two_steps(ctx: inngest.ContextSync) -> Any:
    def step_1() -> list[dict[str, Any]]:
        count("two-steps:1")
        return [{"foo": {"bar": 1}, "empty": None}]

    out = ctx.step.run("step_1", step_1)
    ctx.step.run("step_2", lambda: count("two-steps:2"))
    return out


@case("args")
def step_args(ctx: inngest.ContextSync) -> Any:
    def callback(a: int, *, b: str) -> list[Any]:
        return [a, b]

    positional = ctx.step.run("positional", lambda a, b: [a, b], 1, "a")
    partial = ctx.step.run("partial", functools.partial(callback, 1, b="a"))
    return {"positional": positional, "partial": partial}


@case("args-async")
async def step_args_async(ctx: inngest.Context) -> Any:
    async def callback(a: int, *, b: str) -> list[Any]:
        return [a, b]

    async def both(a: int, b: str) -> list[Any]:
        return [a, b]

    positional = await ctx.step.run("positional", both, 1, "a")
    partial = await ctx.step.run("partial", functools.partial(callback, 1, b="a"))
    return {"positional": positional, "partial": partial}


@case("tuple-output")
def tuple_output(ctx: inngest.ContextSync) -> Any:
    out = ctx.step.run("step_1", lambda: (1, 2))
    seen["tuple"] = out
    return out


@case("no-steps")
async def no_steps(ctx: inngest.Context) -> Any:
    return {"foo": {"bar": 1}}


@case("dedupe-ids")
def dedupe_ids(ctx: inngest.ContextSync) -> Any:
    outputs = []
    for i in range(2):
        outputs.append(ctx.step.run("foo", lambda i=i: count(f"dedupe:{i}") and i))
    return outputs


@case("inconsistent-order")
def inconsistent_order(ctx: inngest.ContextSync) -> None:
    calls = [
        lambda: ctx.step.run("step_1", lambda: count("order:1") and 1),
        lambda: ctx.step.run("step_2", lambda: count("order:2") and 2),
    ]
    if count(f"order:{ctx.run_id}") % 2 == 0:  # every other execution, the other order
        calls.reverse()
    calls.pop()()
    calls.pop()()
    ctx.step.sleep("nap", 50)  # a second execution replays them the other way round


@case("big-steps")
def big_steps(ctx: inngest.ContextSync) -> int:
    for i in range(10):  # 10 MB of step output to replay
        ctx.step.run(f"step_{i}", lambda i=i: count(f"big:{i}") and "a" * 1024 * 1024)
    ctx.step.sleep("nap", 50)
    return 10


# -- context, events -------------------------------------------------------------------


@case("context")
def context(ctx: inngest.ContextSync) -> Any:
    seen["context"] = ctx
    return None


@case("context-async")
async def context_async(ctx: inngest.Context) -> Any:
    seen["context-async"] = ctx
    return None


@case(
    "two-triggers",
    trigger=[
        inngest.TriggerEvent(event="case/trigger-1"),
        inngest.TriggerEvent(event="case/trigger-2"),
    ],
)
def two_triggers(ctx: inngest.ContextSync) -> str:
    return ctx.event.name


TData = TypeVar("TData", bound=pydantic.BaseModel)


class BaseEvent(pydantic.BaseModel, Generic[TData]):
    data: TData
    id: str = ""
    name: ClassVar[str]
    ts: int = 0

    @classmethod
    def from_event(cls, event: inngest.Event) -> Any:
        return cls.model_validate(event.model_dump(mode="json"))

    def to_event(self) -> inngest.Event:
        return inngest.Event(
            name=self.name, data=self.data.model_dump(mode="json"), id=self.id, ts=self.ts
        )


class CountData(pydantic.BaseModel):
    count: int


class CountEvent(BaseEvent[CountData]):
    name = "case/pydantic-event"


@case("pydantic-event", trigger=inngest.TriggerEvent(event=CountEvent.name))
def pydantic_event(ctx: inngest.ContextSync) -> Any:
    return CountEvent.from_event(ctx.event).model_dump(mode="json")


# -- errors, retries -----------------------------------------------------------------------


class MyError(Exception):
    pass


@case("change-step-error")
def change_step_error(ctx: inngest.ContextSync) -> None:
    def foo() -> None:
        raise ValueError("foo")

    try:
        ctx.step.run("foo", foo)
    except inngest.StepError:
        raise MyError("I am new") from None


@case("invokee-fails", trigger=inngest.TriggerEvent(event="case/never"))
def invokee_fails(ctx: inngest.ContextSync) -> None:
    raise MyError("oh no")


@case("invoke-failure")
def invoke_failure(ctx: inngest.ContextSync) -> None:
    try:
        ctx.step.invoke("invoke", function=invokee_fails)
    except inngest.StepError as err:
        seen["invoke-failure"] = (err.message, err.name, err.stack)
        raise


@case("invokee/by-id", trigger=inngest.TriggerEvent(event="case/never"))
async def invokee_by_id(ctx: inngest.Context) -> Any:
    return {"foo": {"bar": 1}}


@case("invoke-by-id")
async def invoke_by_id(ctx: inngest.Context) -> Any:
    return await ctx.step.invoke_by_id("invoke", app_id=client.app_id, function_id="invokee/by-id")


@case("retry-after", retries=2)
def retry_after(ctx: inngest.ContextSync) -> None:
    key = ctx.run_id
    if "fn-1" not in seen.setdefault(key, {}):
        seen[key]["fn-1"] = time.monotonic()
        raise inngest.RetryAfterError("fn-1", 1000)
    seen[key].setdefault("fn-1-retry", time.monotonic())

    def step() -> None:
        if "step" not in seen[key]:
            seen[key]["step"] = time.monotonic()
            raise inngest.RetryAfterError("step", datetime.timedelta(seconds=1))
        seen[key].setdefault("step-retry", time.monotonic())

    ctx.step.run("step_1", step)
    if "fn-2" not in seen[key]:
        seen[key]["fn-2"] = time.monotonic()
        later = datetime.datetime.now() + datetime.timedelta(seconds=1)  # naive: local time
        raise inngest.RetryAfterError("fn-2", later)
    seen[key].setdefault("fn-2-retry", time.monotonic())


def record_failure(ctx: inngest.ContextSync) -> None:
    seen["on-failure"] = ctx


@case("on-failure", on_failure=record_failure)
def on_failure(ctx: inngest.ContextSync) -> None:
    seen["on-failure-run"] = ctx.run_id
    raise MyError("intentional failure")


# -- parallel ------------------------------------------------------------------------------


@case("child-sleeps", trigger=inngest.TriggerEvent(event="case/never"))
def child_sleeps(ctx: inngest.ContextSync) -> str:
    ctx.step.sleep("sleep", datetime.timedelta(seconds=1))
    return "done"


@case("parallel-steps")
def parallel_steps(ctx: inngest.ContextSync) -> Any:
    out = ctx.group.parallel(
        (
            lambda: ctx.step.invoke("invoke", function=child_sleeps),
            lambda: ctx.step.run("1a", lambda: count("par:1a") and 1),
            lambda: ctx.step.run("1b", lambda: count("par:1b") and 2),
            lambda: ctx.step.send_event("send", events=inngest.Event(name="case/noop")),
        )
    )
    ctx.step.run("after", lambda: count("par:after"))
    seen["parallel-steps"] = out
    return list(out)


@case("parallel-groups")
async def parallel_groups(ctx: inngest.Context) -> Any:
    async def step(step_id: str) -> str:
        count(f"groups:{step_id}")
        return step_id

    async def group_1() -> list[str]:
        return [await ctx.step.run("1a", step, "1a"), await ctx.step.run("1b", step, "1b")]

    async def group_2() -> list[str]:
        return [await ctx.step.run(s, step, s) for s in ("2a", "2b", "2c")]

    out = await ctx.group.parallel((group_1, group_2, lambda: ctx.step.run("3", step, "3")))
    await ctx.step.run("after", step, "after")
    seen["parallel-groups"] = out
    return list(out)


def _race_steps(order: list[str]) -> dict[str, Any]:
    def slow(label: str) -> Any:
        def run() -> None:
            time.sleep(0.5)
            with lock:
                order.append(label)

        return run

    def fast(label: str) -> Any:
        def run() -> None:
            with lock:
                order.append(label)

        return run

    return {"a.1": fast("a.1"), "a.2": fast("a.2"), "b.1": slow("b.1"), "b.2": slow("b.2")}


race_order: dict[str, list[str]] = {"sync": [], "async": []}


@case("parallel-race")
def parallel_race(ctx: inngest.ContextSync) -> Any:
    steps = _race_steps(race_order["sync"])

    def fast_group() -> list[Any]:
        return [ctx.step.run("a.1", steps["a.1"]), ctx.step.run("a.2", steps["a.2"])]

    def slow_group() -> list[Any]:
        return [ctx.step.run("b.1", steps["b.1"]), ctx.step.run("b.2", steps["b.2"])]

    out = ctx.group.parallel((fast_group, slow_group), parallel_mode=inngest.ParallelMode.RACE)
    return list(out)


@case("parallel-race-async")
async def parallel_race_async(ctx: inngest.Context) -> Any:
    steps = _race_steps(race_order["async"])

    async def fast_group() -> list[Any]:
        return [await ctx.step.run("a.1", steps["a.1"]), await ctx.step.run("a.2", steps["a.2"])]

    async def slow_group() -> list[Any]:
        return [await ctx.step.run("b.1", steps["b.1"]), await ctx.step.run("b.2", steps["b.2"])]

    out = await ctx.group.parallel(
        (fast_group, slow_group), parallel_mode=inngest.ParallelMode.RACE
    )
    return list(out)


# -- flow control, cancel, sleep, wait -------------------------------------------------------


@case("concurrent-sync")
def concurrent_sync(ctx: inngest.ContextSync) -> None:
    seen.setdefault("concurrent", set()).add(ctx.run_id)
    deadline = time.monotonic() + 20
    while len(seen["concurrent"]) < 2:  # blocks unless the two runs execute side by side
        assert time.monotonic() < deadline, "the other run never started"
        time.sleep(0.05)


@case(
    "cancel",
    cancel=[inngest.Cancel(event="case/cancel.cancel", if_exp="event.data.id == async.data.id")],
)
def cancel_in_flight(ctx: inngest.ContextSync) -> None:
    seen.setdefault("cancel-started", set()).add(ctx.event.data["id"])
    time.sleep(1.5)  # the cancel event arrives meanwhile
    seen.setdefault("cancel-done", set()).add(ctx.event.data["id"])


@case("debounce", debounce=inngest.Debounce(period=datetime.timedelta(milliseconds=500)))
def debounced(ctx: inngest.ContextSync) -> int:
    count("debounce")
    return int(ctx.event.data["n"])


@case("singleton-skip", singleton=inngest.Singleton(mode="skip"))
def singleton_skip(ctx: inngest.ContextSync) -> None:
    ctx.step.sleep("zzz", datetime.timedelta(seconds=2))


@case("singleton-cancel", singleton=inngest.Singleton(mode="cancel"))
def singleton_cancel(ctx: inngest.ContextSync) -> None:
    ctx.step.sleep("zzz", datetime.timedelta(seconds=2))


@case("big-batch", batch_events=inngest.Batch(max_size=8, timeout=datetime.timedelta(seconds=10)))
def big_batch(ctx: inngest.ContextSync) -> int:
    return len(ctx.events)


@case("sleep-until")
def sleep_until(ctx: inngest.ContextSync) -> None:
    times = seen.setdefault(ctx.run_id, {})
    times.setdefault("before", time.monotonic())
    ctx.step.sleep_until("zzz", datetime.datetime.now() + datetime.timedelta(seconds=1))
    times.setdefault("after", time.monotonic())


@case("wait-fulfill")
def wait_fulfill(ctx: inngest.ContextSync) -> Any:
    found = ctx.step.wait_for_event(
        "wait",
        event="case/wait-fulfill.fulfill",
        if_exp="event.data.id == async.data.id",
        timeout=datetime.timedelta(minutes=1),
    )
    seen["wait-fulfill"] = found
    return None


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flow]:
    tmp = tmp_path_factory.mktemp("sdk-cases")
    app = Celery("sdk-cases", broker=f"celeryflow+sqlite:///{tmp}/broker.db")
    app.conf.task_default_queue = f"sdk-cases-{tmp.name}"
    app.conf.worker_hijack_root_logger = False
    flow = Flow(
        app, store=f"sqlite:///{tmp}/store.db", retry_base="50ms", reconcile_interval="500ms"
    )
    inngest_celery.serve(app, client, FUNCTIONS)
    with worker(flow, concurrency=6):
        yield flow


def send(name: str, data: dict[str, Any] | None = None) -> str:
    [event_id] = client.send_sync(inngest.Event(name=f"case/{name}", data=data or {}))
    return event_id


def completed(flow: Flow, name: str, data: dict[str, Any] | None = None) -> Run:
    run = wait_for_run(flow, event_id=send(name, data), timeout=60)
    assert run.status == RunStatus.COMPLETED, run.error
    return run


def outputs(run: Run) -> dict[str, Any]:
    return {s.name: s.output for s in run.steps}


# -- tests ---------------------------------------------------------------------------------


def test_async_fn_with_sync_step_callback(flow: Flow) -> None:
    assert completed(flow, "async-fn-sync-callback").output == "hi"


def test_two_steps_each_once(flow: Flow) -> None:
    run = completed(flow, "two-steps")
    assert run.output == [{"empty": None, "foo": {"bar": 1}}]
    assert outputs(run)["step_1"] == [{"empty": None, "foo": {"bar": 1}}]
    assert (counts["two-steps:1"], counts["two-steps:2"]) == (1, 1)


@pytest.mark.parametrize("name", ["args", "args-async"])
def test_step_callback_args_and_kwargs(flow: Flow, name: str) -> None:
    assert completed(flow, name).output == {"positional": [1, "a"], "partial": [1, "a"]}


def test_tuple_output_becomes_a_list(flow: Flow) -> None:
    run = completed(flow, "tuple-output")
    assert seen["tuple"] == [1, 2] and run.output == [1, 2]
    assert outputs(run)["step_1"] == [1, 2]


def test_no_steps(flow: Flow) -> None:
    assert completed(flow, "no-steps").output == {"foo": {"bar": 1}}


def test_duplicate_step_ids_get_a_counter(flow: Flow) -> None:
    run = completed(flow, "dedupe-ids")
    assert run.output == [0, 1]
    assert [(s.name, s.output) for s in run.steps] == [("foo", 0), ("foo", 1)]
    assert (counts["dedupe:0"], counts["dedupe:1"]) == (1, 1)


def test_inconsistent_step_order_on_replay(flow: Flow) -> None:
    run = completed(flow, "inconsistent-order")
    assert counts[f"order:{run.id}"] == 2, "two executions, in two orders"
    assert (counts["order:1"], counts["order:2"]) == (1, 1)
    assert outputs(run)["step_1"] == 1 and outputs(run)["step_2"] == 2


def test_large_step_outputs_replay(flow: Flow) -> None:
    run = completed(flow, "big-steps")
    assert all(counts[f"big:{i}"] == 1 for i in range(10))
    assert len(outputs(run)["step_9"]) == 1024 * 1024


@pytest.mark.parametrize("name", ["context", "context-async"])
def test_function_args_and_event_payload(flow: Flow, name: str) -> None:
    run = completed(flow, name, {"foo": {"bar": "baz"}})
    ctx = seen[name]
    assert ctx.attempt == 0 and ctx.run_id == run.id
    assert isinstance(ctx.event, inngest.Event) and len(ctx.events) == 1
    assert isinstance(ctx.step, inngest.Step | inngest.StepSync)
    assert ctx.event.id != "" and ctx.event.name == f"case/{name}" and ctx.event.ts > 0
    assert ctx.event.data == {"foo": {"bar": "baz"}}


def test_multiple_triggers(flow: Flow) -> None:
    first = completed(flow, "trigger-1")
    second = completed(flow, "trigger-2")
    assert (first.output, second.output) == ("case/trigger-1", "case/trigger-2")
    assert first.id != second.id


def test_pydantic_event(flow: Flow) -> None:
    [event_id] = client.send_sync(CountEvent(data=CountData(count=1)).to_event())
    run = wait_for_run(flow, event_id=event_id, timeout=60)
    assert run.status == RunStatus.COMPLETED, run.error
    event = CountEvent.model_validate(run.output)
    assert event.data.count == 1 and event.id != "" and event.ts > 0


def test_change_step_error(flow: Flow) -> None:
    run = wait_for_run(flow, event_id=send("change-step-error"), timeout=60)
    assert run.status == RunStatus.FAILED
    assert (run.error["type"], run.error["message"]) == ("MyError", "I am new")


def test_invoke_failure(flow: Flow) -> None:
    run = wait_for_run(flow, event_id=send("invoke-failure"), timeout=60)
    assert run.status == RunStatus.FAILED
    assert (run.error["type"], run.error["message"]) == ("MyError", "oh no")
    message, name, stack = seen["invoke-failure"]
    assert (message, name) == ("oh no", "MyError") and isinstance(stack, str)


def test_invoke_by_id(flow: Flow) -> None:
    assert completed(flow, "invoke-by-id").output == {"foo": {"bar": 1}}


def test_retry_after_error_int_timedelta_and_datetime(flow: Flow) -> None:
    run = completed(flow, "retry-after")
    times = seen[run.id]
    for raised in ("fn-1", "step", "fn-2"):
        waited = times[f"{raised}-retry"] - times[raised]
        assert 0.9 <= waited < 2.5, (raised, waited)


def test_on_failure(flow: Flow) -> None:
    run = wait_for_run(flow, event_id=send("on-failure", {"foo": 1}), timeout=60)
    assert run.status == RunStatus.FAILED
    assert (run.error["type"], run.error["message"]) == ("MyError", "intentional failure")
    assert run.error["traceback"].startswith("Traceback (most recent call last):")
    assert "test_sdk_cases.py" in run.error["traceback"]
    ctx = wait_for(lambda: seen.get("on-failure"), timeout=30, what="the on_failure handler")
    assert ctx.run_id != run.id and ctx.attempt == 0 and len(ctx.events) == 1
    assert isinstance(ctx.step, inngest.StepSync)
    data = ctx.event.data
    assert data["function_id"] == on_failure.id and data["run_id"] == run.id
    assert data["error"]["name"] == "MyError" and data["error"]["message"] == "intentional failure"
    original = inngest.Event.from_raw(data["event"])
    assert isinstance(original, inngest.Event)
    assert original.data == {"foo": 1} and original.name == "case/on-failure" and original.ts > 0


def test_parallel_steps_with_invoke_and_send_event(flow: Flow) -> None:
    run = completed(flow, "parallel-steps")
    done, one, two, ids = seen["parallel-steps"]
    assert (done, one, two) == ("done", 1, 2) and len(ids) == 1
    assert (counts["par:1a"], counts["par:1b"], counts["par:after"]) == (1, 1, 1)
    assert run.output == ["done", 1, 2, ids]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_parallel_mode_race_each_branch_goes_on_at_once(flow: Flow, mode: str) -> None:
    """parallel_mode_race: the fast branch's second step does not wait for the slow
    branch's first, and every branch's result comes back (the SDK's count of HTTP
    requests has no counterpart)."""
    run = completed(flow, "parallel-race" if mode == "sync" else "parallel-race-async")
    assert run.output == [[None, None], [None, None]]
    assert race_order[mode] == ["a.1", "a.2", "b.1", "b.2"]


def test_parallel_group_of_sequential_steps(flow: Flow) -> None:
    completed(flow, "parallel-groups")
    assert seen["parallel-groups"] == (["1a", "1b"], ["2a", "2b", "2c"], "3")
    for step_id in ("1a", "1b", "2a", "2b", "2c", "3", "after"):
        assert counts[f"groups:{step_id}"] == 1, step_id


def test_concurrent_sync_functions(flow: Flow) -> None:
    ids = client.send_sync([inngest.Event(name="case/concurrent-sync")] * 2)
    for event_id in ids:
        assert wait_for_run(flow, event_id=event_id, timeout=60).status == RunStatus.COMPLETED


def test_cancel_a_running_function_and_not_on_a_mismatch(flow: Flow) -> None:
    doomed, kept = send("cancel", {"id": 123}), send("cancel", {"id": 7})
    wait_for(lambda: seen.get("cancel-started") == {123, 7}, timeout=30, what="both running")
    client.send_sync(inngest.Event(name="case/cancel.cancel", data={"id": 123}))
    assert wait_for_run(flow, event_id=doomed, timeout=30).status == RunStatus.CANCELLED
    assert wait_for_run(flow, event_id=kept, timeout=30).status == RunStatus.COMPLETED
    wait_for(lambda: seen.get("cancel-done") == {123, 7}, timeout=30, what="both bodies ended")


def test_debounce(flow: Flow) -> None:
    ids = client.send_sync([inngest.Event(name="case/debounce", data={"n": n}) for n in (1, 2)])
    run = wait_for_run(flow, event_id=ids[1], timeout=30)
    assert run.status == RunStatus.COMPLETED and run.output == 2
    assert counts["debounce"] == 1


def test_singleton_skip(flow: Flow) -> None:
    first, second = client.send_sync([inngest.Event(name="case/singleton-skip")] * 2)
    assert wait_for_run(flow, event_id=first, timeout=30).status == RunStatus.COMPLETED
    assert wait_for_run(flow, event_id=second, timeout=30).status == RunStatus.SKIPPED


def test_singleton_cancel(flow: Flow) -> None:
    first = send("singleton-cancel")
    wait_for_run(flow, event_id=first, status=RunStatus.SLEEPING, timeout=30)
    second = send("singleton-cancel")
    assert wait_for_run(flow, event_id=first, timeout=30).status == RunStatus.CANCELLED
    assert wait_for_run(flow, event_id=second, timeout=30).status == RunStatus.COMPLETED


def test_a_batch_of_large_events(flow: Flow) -> None:
    events = [inngest.Event(name="case/big-batch", data={"msg": "a" * 1024 * 1024})] * 8
    ids = client.send_sync(events)
    run = wait_for_run(flow, event_id=ids[0], timeout=30)
    assert run.status == RunStatus.COMPLETED and run.output == 8


def test_sleep_until_a_naive_local_datetime(flow: Flow) -> None:
    run = completed(flow, "sleep-until")
    times = seen[run.id]
    assert times["after"] - times["before"] >= 1.0


def test_wait_for_event_fulfilled_returns_the_event(flow: Flow) -> None:
    event_id = send("wait-fulfill", {"id": 123})
    wait_for_run(flow, event_id=event_id, status=RunStatus.WAITING, timeout=30)
    client.send_sync(inngest.Event(name="case/wait-fulfill.fulfill", data={"id": 123}))
    assert wait_for_run(flow, event_id=event_id, timeout=30).status == RunStatus.COMPLETED
    found = seen["wait-fulfill"]
    assert isinstance(found, inngest.Event)
    assert found.id != "" and found.name == "case/wait-fulfill.fulfill" and found.ts > 0


def test_many_parallel_sends(flow: Flow) -> None:
    async def send_all() -> list[list[str]]:
        sends = [client.send(inngest.Event(name="case/never")) for _ in range(50)]
        return await asyncio.gather(*sends)

    ids = asyncio.run(send_all())
    assert len({i for [i] in ids}) == 50
