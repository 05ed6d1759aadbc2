"""Inngest SDK conformance (issue 16), part two, on a real worker: the client's
serializer with ``output_type``, and ``ctx.logger`` over a user's logger class.

Written anew after the SDK's serialization tests and its ``logger`` function case.
One app and worker for the module; three clients (a pydantic serializer, a custom
one, none) served on it.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from collections.abc import Iterator
from typing import Any

import pydantic
import pytest
from celery import Celery

from celeryflow import ConfigError, Flow, RunStatus
from celeryflow.compat import inngest
from celeryflow.compat.inngest import celery as inngest_celery
from celeryflow.testing import wait_for_run, worker


class User(pydantic.BaseModel):
    name: str


seen: dict[str, Any] = {}  # what the functions saw, by test key (the worker is a thread)

typed = inngest.Inngest(app_id="ser", serializer=inngest.PydanticSerializer())
plain = inngest.Inngest(app_id="plain")


def on(client: inngest.Inngest, fn_id: str, **options: Any) -> Any:
    return client.create_function(
        fn_id=fn_id,
        retries=0,
        trigger=inngest.TriggerEvent(event=f"{client.app_id}/{fn_id}"),
        **options,
    )


# -- a pydantic serializer ---------------------------------------------------------------


@on(typed, "child", output_type=list[User])
def child(ctx: inngest.ContextSync) -> list[User]:
    return [User(name="Alice")]


@on(typed, "parent", output_type=list[User])
def parent(ctx: inngest.ContextSync) -> list[User]:
    users = ctx.step.invoke("invoke", function=child)
    seen["invoke"] = users
    return users  # type: ignore[no-any-return]


@on(typed, "untyped-child")
def untyped_child(ctx: inngest.ContextSync) -> list[User]:
    return [User(name="Alice")]


@on(typed, "invoke-untyped")
def invoke_untyped(ctx: inngest.ContextSync) -> Any:
    return ctx.step.invoke("invoke", function=untyped_child)


@on(typed, "steps")
def typed_steps(ctx: inngest.ContextSync) -> None:
    one = ctx.step.run("object", lambda name: User(name=name), "Alice", output_type=User)
    none = ctx.step.run("none", lambda: None, output_type=User | None)
    many = ctx.step.run("list", lambda: [User(name="Alice")], output_type=list[User])
    primitive = ctx.step.run("primitive", lambda: 1)
    ctx.step.sleep("nap", 50)  # the next execution reads them back from the store
    seen.setdefault("steps", []).append((one, none, many, primitive))


@on(typed, "steps-async")
async def typed_steps_async(ctx: inngest.Context) -> None:
    async def make() -> User:
        return User(name="Bo")

    one = await ctx.step.run("object", make, output_type=User)
    await ctx.step.sleep("nap", 50)
    seen.setdefault("steps-async", []).append(one)


@on(typed, "step-untyped")
def step_untyped(ctx: inngest.ContextSync) -> None:
    ctx.step.run("a", lambda: User(name="Alice"))


@on(typed, "send")
def typed_send(ctx: inngest.ContextSync) -> list[str]:
    return ctx.step.send_event("send", [inngest.Event(name="ser/never", data={"n": "Alice"})])


def typed_failure_handler(ctx: inngest.ContextSync) -> list[User]:
    return [User(name="Alice")]


@on(typed, "fails", on_failure=typed_failure_handler)
def typed_fails(ctx: inngest.ContextSync) -> None:
    raise ValueError("oh no")


# -- a custom serializer -----------------------------------------------------------------


@dataclasses.dataclass
class Animal:
    name: str

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Animal:
        return cls(**data)


class DataclassSerializer(inngest.Serializer):
    def serialize(self, obj: object, typ: object) -> object:
        return dataclasses.asdict(obj)  # type: ignore[call-overload]

    def deserialize(self, obj: object, typ: object) -> object:
        return typ.from_dict(obj)  # type: ignore[attr-defined]


custom = inngest.Inngest(app_id="custom", serializer=DataclassSerializer())


@on(custom, "child", output_type=Animal)
def animal_child(ctx: inngest.ContextSync) -> Animal:
    return Animal(name="Baxter")


@on(custom, "parent", output_type=Animal)
def animal_parent(ctx: inngest.ContextSync) -> Animal:
    animal = ctx.step.invoke("invoke", function=animal_child)
    seen["animal"] = animal
    return animal  # type: ignore[no-any-return]


# -- no serializer -----------------------------------------------------------------------


@on(plain, "typed-output", output_type=list[User])
def plain_typed_output(ctx: inngest.ContextSync) -> list[User]:
    return [User(name="Alice")]


@on(plain, "typed-step", output_type=User)
def plain_typed_step(ctx: inngest.ContextSync) -> None:
    ctx.step.run("a", lambda: User(name="Alice"), output_type=User)


def plain_failure_handler(ctx: inngest.ContextSync) -> list[User]:
    return [User(name="Alice")]


@on(plain, "fails", on_failure=plain_failure_handler)
def plain_fails(ctx: inngest.ContextSync) -> None:
    raise ValueError("oh no")


@on(plain, "datetime-output")
def plain_datetime_output(ctx: inngest.ContextSync) -> Any:
    return datetime.datetime(2024, 1, 1)  # json.dumps refuses it; so does the SDK


# -- ctx.logger over a logger class of the user's ----------------------------------------


class RecordingLogger(logging.Logger):
    """A Logger subclass whose own ``info`` records the message: it must be called
    (not bypassed by an adapter calling ``log``), once per line per run."""

    def __init__(self) -> None:
        super().__init__("recording")
        self.info_calls: list[object] = []

    def info(self, msg: object, *args: object, **kwargs: Any) -> None:
        self.info_calls.append(msg)


logged = inngest.Inngest(app_id="logged")
raised: set[str] = set()


def once(key: str) -> bool:
    if key in raised:
        return False
    raised.add(key)
    return True


def logger_case(ctx: Any, step: Any) -> Iterator[Any]:
    """The SDK's logger case as a generator of step calls, shared by the sync and
    async functions: each yielded value is awaited (async) or already a result."""
    ctx.logger.info("function start")
    yield step("step_1", lambda: ctx.logger.info("step_1"))
    ctx.logger.info("log before function-level raise")
    if once(f"{ctx.run_id}:fn"):
        raise inngest.RetryAfterError("", 100, quiet=True)
    yield step("step_2", lambda: ctx.logger.info("step_2"))
    ctx.logger.info("log before step-level raise")

    def step_3() -> None:
        if once(f"{ctx.run_id}:step"):
            raise inngest.RetryAfterError("", 100, quiet=True)

    yield step("step_3", step_3)
    ctx.logger.info("function end")


@logged.create_function(fn_id="sync", retries=1, trigger=inngest.TriggerEvent(event="log/sync"))
def logger_sync(ctx: inngest.ContextSync) -> None:
    for _ in logger_case(ctx, ctx.step.run):
        pass


@logged.create_function(fn_id="async", retries=1, trigger=inngest.TriggerEvent(event="log/async"))
async def logger_async(ctx: inngest.Context) -> None:
    async def step(step_id: str, handler: Any) -> Any:
        async def call() -> Any:
            return handler()

        return await ctx.step.run(step_id, call)

    for pending in logger_case(ctx, step):
        await pending


SDK_LOGGER_LINES = [
    "function start",
    "step_1",
    "log before function-level raise",
    "log before function-level raise",
    "step_2",
    "log before step-level raise",
    "log before step-level raise",
    "function end",
]


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flow]:
    tmp = tmp_path_factory.mktemp("conformance-ser")
    app = Celery("conformance-ser", broker=f"celeryflow+sqlite:///{tmp}/broker.db")
    app.conf.task_default_queue = f"conformance-ser-{tmp.name}"
    app.conf.worker_hijack_root_logger = False
    flow = Flow(app, store=f"sqlite:///{tmp}/store.db", retry_base="50ms", reconcile_interval="1s")
    typed_functions = [child, parent, untyped_child, invoke_untyped, typed_steps]
    typed_functions += [typed_steps_async, step_untyped, typed_send, typed_fails]
    inngest_celery.serve(app, typed, typed_functions)
    inngest_celery.serve(app, custom, [animal_child, animal_parent])
    inngest_celery.serve(
        app, plain, [plain_typed_output, plain_typed_step, plain_fails, plain_datetime_output]
    )
    inngest_celery.serve(app, logged, [logger_sync, logger_async])
    with worker(flow, concurrency=4):
        yield flow


def run_of(flow: Flow, client: inngest.Inngest, fn_id: str) -> Any:
    [event_id] = client.send_sync(inngest.Event(name=f"{client.app_id}/{fn_id}"))
    return wait_for_run(flow, event_id=event_id, timeout=60)


def assert_unserializable(run: Any, message: str) -> None:
    assert run.status == RunStatus.FAILED, run.output
    assert run.error["type"] == "OutputUnserializableError", run.error
    assert run.error["message"] == message


# -- serializer tests ----------------------------------------------------------------------


def test_invoke_returns_models_with_an_output_type(flow: Flow) -> None:
    run = run_of(flow, typed, "parent")
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == [{"name": "Alice"}]
    assert seen["invoke"] == [User(name="Alice")]


def test_invoking_a_function_without_an_output_type_fails_on_its_model(flow: Flow) -> None:
    run = run_of(flow, typed, "invoke-untyped")
    assert_unserializable(run, "returned unserializable data")


def test_steps_return_models_when_run_and_when_read_back(flow: Flow) -> None:
    run = run_of(flow, typed, "steps")
    assert run.status == RunStatus.COMPLETED, run.error
    one, none, many, primitive = seen["steps"][-1]
    assert isinstance(one, User) and one.name == "Alice"
    assert none is None
    assert many == [User(name="Alice")] and isinstance(many[0], User)
    assert primitive == 1
    stored = {s.name: s.output for s in run.steps}
    assert stored["object"] == {"name": "Alice"} and stored["list"] == [{"name": "Alice"}]
    run = run_of(flow, typed, "steps-async")
    assert run.status == RunStatus.COMPLETED, run.error
    assert seen["steps-async"][-1] == User(name="Bo")


def test_a_model_from_a_step_without_an_output_type_fails_the_run(flow: Flow) -> None:
    assert_unserializable(run_of(flow, typed, "step-untyped"), '"a" returned unserializable data')


def test_send_event_works_with_a_serializer(flow: Flow) -> None:
    run = run_of(flow, typed, "send")
    assert run.status == RunStatus.COMPLETED, run.error
    assert len(run.output) == 1


def test_on_failure_output_goes_through_the_serializer(flow: Flow) -> None:
    run = run_of(flow, typed, "fails")
    assert run.status == RunStatus.FAILED
    [handler_run] = flow.list_runs(function_id="ser-fails-failure")
    handler_run = wait_for_run(flow, handler_run.id, timeout=60)
    assert handler_run.status == RunStatus.COMPLETED, handler_run.error
    assert handler_run.output == [{"name": "Alice"}]


def test_a_custom_serializer(flow: Flow) -> None:
    run = run_of(flow, custom, "parent")
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"name": "Baxter"}
    assert seen["animal"] == Animal(name="Baxter")


@pytest.mark.parametrize(
    ("fn_id", "message"),
    [
        ("typed-output", "returned unserializable data"),
        ("typed-step", '"a" returned unserializable data'),
        ("datetime-output", "returned unserializable data"),
    ],
)
def test_without_a_serializer_models_fail_the_run(flow: Flow, fn_id: str, message: str) -> None:
    assert_unserializable(run_of(flow, plain, fn_id), message)


def test_without_a_serializer_an_on_failure_model_fails_the_handler(flow: Flow) -> None:
    run_of(flow, plain, "fails")
    [handler_run] = flow.list_runs(function_id="plain-fails-failure")
    handler_run = wait_for_run(flow, handler_run.id, timeout=60)
    assert_unserializable(handler_run, "returned unserializable data")


def test_a_serializer_without_its_methods_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"serializer=.*serialize\(obj, typ\)"):
        inngest.Inngest(app_id="bad", serializer=object())  # type: ignore[arg-type]


# -- logger --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["log/sync", "log/async"])
def test_ctx_logger_calls_the_users_logger_once_per_line_as_the_sdk(flow: Flow, name: str) -> None:
    recorder = RecordingLogger()
    logged.set_logger(recorder)
    [event_id] = logged.send_sync(inngest.Event(name=name))
    run = wait_for_run(flow, event_id=event_id, timeout=60)
    assert run.status == RunStatus.COMPLETED, run.error
    assert recorder.info_calls == SDK_LOGGER_LINES
