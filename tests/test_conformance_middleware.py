"""The Inngest SDK's middleware (issue 16 item 2) on a real worker, embedded stack.

Written anew from the SDK's function cases ``function_middleware``,
``middleware_order`` and ``middleware_parallel_steps`` and its encryption
middleware's cases (``inngest_encryption``): which hooks run, in which order, around
the function's code, and what ``transform_input`` / ``transform_output`` change. An
SDK request is a celeryflow execution (see celeryflow/compat/inngest/_middleware.py),
so a function that runs several steps in one execution sees one round of hooks for
them, and a sleep makes the next round.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from celeryflow import Flow, RunStatus
from celeryflow.compat import inngest
from celeryflow.compat.inngest import celery as inngest_celery
from celeryflow.testing import wait_for_run, worker

client = inngest.Inngest(app_id="middleware")
FUNCTIONS: list[inngest.Function[Any]] = []
messages: dict[str, list[str]] = {}
seen: dict[str, list[Any]] = {}
lock = threading.Lock()
HOOKS = (
    "transform_input",
    "before_execution",
    "before_send_events",
    "after_send_events",
    "after_execution",
    "transform_output",
    "before_response",
)


def note(case: str, message: str) -> None:
    with lock:
        messages.setdefault(case, []).append(message)


def saw(case: str, value: Any) -> None:
    with lock:
        seen.setdefault(case, []).append(value)


def send(name: str, data: dict[str, Any] | None = None, via: inngest.Inngest = client) -> str:
    [event_id] = via.send_sync(inngest.Event(name=name, data=data or {}))
    return event_id


def recorder(case: str, label: str = "hook", *, is_async: bool = False) -> type[Any]:
    """A middleware class noting each hook as ``<label>:<hook>`` under ``case``; its
    transform_output turns "original output" into "transformed output"."""

    def transform_output(result: inngest.TransformOutputResult) -> None:
        note(case, f"{label}:transform_output")
        if result.output == "original output":
            result.output = "transformed output"

    def plain(hook: str) -> Any:
        return lambda *_: note(case, f"{label}:{hook}")

    def raw(self: Any, client: inngest.Inngest, raw_request: object) -> None:
        base.__init__(self, client, raw_request)
        saw(case, ("raw_request", raw_request))

    methods: dict[str, Any] = {
        hook: plain(hook) for hook in HOOKS if hook not in ("transform_output",)
    }
    methods["transform_output"] = lambda self, result: transform_output(result)
    methods["__init__"] = raw
    if is_async:
        for hook in HOOKS:
            sync = methods[hook]

            def make(sync: Any) -> Any:
                async def hook_async(*args: Any) -> None:
                    sync(*args)

                return hook_async

            methods[hook] = make(sync)
    base: type[Any] = inngest.Middleware if is_async else inngest.MiddlewareSync
    return type(f"{label}_{case}", (base,), methods)


def function(fn_id: str, *, via: inngest.Inngest = client, **options: Any) -> Any:
    def decorator(handler: Any) -> Any:
        options.setdefault("retries", 0)
        options.setdefault("trigger", inngest.TriggerEvent(event=f"mw/{fn_id}"))
        made = via.create_function(fn_id=fn_id, **options)(handler)
        FUNCTIONS.append(made)
        return made

    return decorator


# -- function_middleware: every hook, around the function's code ----------------------


@function("hooks", middleware=[recorder("hooks")])
def hooks_sync(ctx: inngest.ContextSync) -> None:
    note("hooks", "fn_logic: before step_1")
    saw("hooks", ctx.step.run("step_1", lambda: "original output"))
    note("hooks", "fn_logic: after step_1")
    ctx.step.sleep("nap", 200)
    note("hooks", "fn_logic: after nap")
    ctx.step.send_event("send", [inngest.Event(name="mw/dummy")])
    note("hooks", "fn_logic: after send")


@function("hooks-async", middleware=[recorder("hooks-async", is_async=True)])
async def hooks_async(ctx: inngest.Context) -> None:
    note("hooks-async", "fn_logic: before step_1")

    async def step_1() -> str:
        return "original output"

    saw("hooks-async", await ctx.step.run("step_1", step_1))
    note("hooks-async", "fn_logic: after step_1")
    await ctx.step.sleep("nap", 200)
    note("hooks-async", "fn_logic: after nap")
    await ctx.step.send_event("send", [inngest.Event(name="mw/dummy")])
    note("hooks-async", "fn_logic: after send")


HOOKS_ORDER = [
    # execution 1: step_1 runs, the sleep parks the run
    "hook:transform_input",
    "hook:before_execution",
    "fn_logic: before step_1",
    "hook:transform_output",  # step_1's result, before it is stored
    "fn_logic: after step_1",
    "hook:after_execution",
    "hook:before_response",
    # execution 2: step_1 and the nap replay, then new code
    "hook:transform_input",
    "fn_logic: before step_1",
    "fn_logic: after step_1",
    "hook:before_execution",
    "fn_logic: after nap",
    "hook:before_send_events",
    "hook:after_send_events",
    "fn_logic: after send",
    "hook:after_execution",
    "hook:transform_output",  # the function's output
    "hook:before_response",
]


@pytest.mark.parametrize("case", ["hooks", "hooks-async"])
def test_function_middleware_hooks_in_order_around_the_code(flow: Flow, case: str) -> None:
    run = wait_for_run(flow, event_id=send(f"mw/{case}"), timeout=60)
    assert run.status == RunStatus.COMPLETED, run.error

    assert messages[case] == HOOKS_ORDER
    # the execution that ran the step saw its own result; the replay saw the
    # stored (transformed) one, as every SDK request after the step's does
    values = [v for v in seen[case] if not isinstance(v, tuple)]
    assert values == ["original output", "transformed output"]
    # no HTTP request here: raw_request is None, once per execution
    assert [v for v in seen[case] if isinstance(v, tuple)] == [("raw_request", None)] * 2
    step_1 = next(s for s in run.steps if s.id == "step_1")
    assert step_1.output == "transformed output"


# -- middleware_order: client middleware first, the "after" hooks reversed ----------------

order_client = inngest.Inngest(app_id="middleware-order", middleware=[recorder("order", "0")])


@function(
    "order",
    via=order_client,
    middleware=[recorder("order", "1"), recorder("order", "2", is_async=True)],
)
def order(ctx: inngest.ContextSync) -> None:
    ctx.step.send_event("a", inngest.Event(name="mw/order-never"))


def test_middleware_order_client_then_function_after_hooks_reversed(flow: Flow) -> None:
    # client.send_sync: the client's middleware alone (skip_middleware skips it)
    [event_id] = order_client.send_sync(inngest.Event(name="mw/order-nothing"))
    assert messages.pop("order") == ["0:before_send_events", "0:after_send_events"]
    event = inngest.Event(name="mw/order")
    [event_id] = order_client.send_sync(event, skip_middleware=True)
    run = wait_for_run(flow, event_id=event_id, timeout=60)
    assert run.status == RunStatus.COMPLETED, run.error
    assert messages["order"] == [
        "0:transform_input",
        "1:transform_input",
        "2:transform_input",
        "0:before_execution",
        "1:before_execution",
        "2:before_execution",
        "0:before_send_events",
        "1:before_send_events",
        "2:before_send_events",
        "2:after_send_events",
        "1:after_send_events",
        "0:after_send_events",
        "2:after_execution",
        "1:after_execution",
        "0:after_execution",
        "2:transform_output",
        "1:transform_output",
        "0:transform_output",
        "0:before_response",
        "1:before_response",
        "2:before_response",
    ]


# -- middleware_parallel_steps: transform_output of each step and the output ---------------

parallel_results: list[inngest.TransformOutputResult] = []


class Collect(inngest.MiddlewareSync):
    def transform_output(self, result: inngest.TransformOutputResult) -> None:
        with lock:
            parallel_results.append(result)


@function("parallel", middleware=[Collect])
def parallel(ctx: inngest.ContextSync) -> str:
    ctx.group.parallel(
        (
            lambda: ctx.step.run("1.1", lambda: "1.1 (step)"),
            lambda: ctx.step.run("1.2", lambda: "1.2 (step)"),
        )
    )
    ctx.step.run("converge", lambda: None)
    return "2 (fn)"


def test_middleware_sees_each_parallel_step_output_once(flow: Flow) -> None:
    run = wait_for_run(flow, event_id=send("mw/parallel"), timeout=60)
    assert run.status == RunStatus.COMPLETED, run.error

    def step(step_id: str) -> inngest.TransformOutputStepInfo:
        return inngest.TransformOutputStepInfo(id=step_id, op=inngest.Opcode.STEP_RUN, opts=None)

    expected = [
        inngest.TransformOutputResult(error=None, output="1.1 (step)", step=step("1.1")),
        inngest.TransformOutputResult(error=None, output="1.2 (step)", step=step("1.2")),
        inngest.TransformOutputResult(error=None, output="2 (fn)", step=None),
        inngest.TransformOutputResult(error=None, output=None, step=step("converge")),
    ]
    assert sorted(parallel_results, key=lambda r: str(r.output)) == expected


# -- encryption: transform_input decrypts, transform_output / before_send_events encrypt ----

MARK = "__ENCRYPTED__"
FIELD = "encrypted"
KEY = b"celeryflow-test-key"


def _xor(data: bytes) -> bytes:
    return bytes(b ^ KEY[i % len(KEY)] for i, b in enumerate(data))


def encrypt(value: Any) -> dict[str, Any]:
    """A stand-in for libsodium (a test needs a reversible, unreadable form only)."""
    text = base64.b64encode(_xor(json.dumps(value).encode())).decode()
    return {MARK: True, "data": text}


def decrypt(value: Any) -> Any:
    if not (isinstance(value, dict) and value.get(MARK) is True):
        return value
    return json.loads(_xor(base64.b64decode(value["data"])).decode())


class Encryption(inngest.MiddlewareSync):
    """The shape of inngest_encryption's EncryptionMiddleware."""

    def before_send_events(self, events: list[inngest.Event]) -> None:
        for ev in events:
            if FIELD in ev.data:
                ev.data = {**ev.data, FIELD: encrypt(ev.data[FIELD])}

    def transform_input(
        self,
        ctx: inngest.Context | inngest.ContextSync,
        function: inngest.Function[Any],
        steps: inngest.StepMemos,
    ) -> None:
        for memo in steps.values():
            memo.data = decrypt(memo.data)
        for ev in [ctx.event, *ctx.events]:
            if FIELD in ev.data:
                ev.data = {**ev.data, FIELD: decrypt(ev.data[FIELD])}

    def transform_output(self, result: inngest.TransformOutputResult) -> None:
        if result.has_output():
            result.output = encrypt(result.output)
        step = result.step
        if step is not None and step.op is inngest.Opcode.INVOKE and step.opts is not None:
            payload = step.opts.get("payload")
            if isinstance(payload, dict) and FIELD in payload.get("data", {}):
                data = payload["data"]
                payload["data"] = {**data, FIELD: encrypt(data[FIELD])}


secret_client = inngest.Inngest(app_id="secret", middleware=[Encryption])


@function("secret-child", via=secret_client)
def secret_child(ctx: inngest.ContextSync) -> dict[str, Any]:
    saw("secret-child", ctx.event.data[FIELD])
    return {"pin": ctx.event.data[FIELD]["pin"] + 1}


@function("secret-received", via=secret_client)
def secret_received(ctx: inngest.ContextSync) -> Any:
    saw("secret-received", ctx.event.data[FIELD])
    return None


@function("secret", via=secret_client)
def secret(ctx: inngest.ContextSync) -> dict[str, Any]:
    card = ctx.event.data[FIELD]
    saw("secret", ("event", card))
    token = ctx.step.run("tokenize", lambda: {"token": f"tok-{card['number']}"})
    saw("secret", ("step", token))
    ctx.step.sleep("nap", 200)  # the rest is a replay of what is stored encrypted
    saw("secret", ("after nap", token))
    child = ctx.step.invoke("child", function=secret_child, data={FIELD: {"pin": 41}})
    ctx.step.send_event(
        "forward", inngest.Event(name="mw/secret-received", data={FIELD: {"note": "hi"}})
    )
    return {"token": token, "child": child}


@function("secret-async", via=secret_client)
async def secret_async(ctx: inngest.Context) -> dict[str, Any]:
    async def tokenize() -> dict[str, Any]:
        return {"token": "tok-async"}

    token = await ctx.step.run("tokenize", tokenize)
    await ctx.step.sleep("nap", 200)
    saw("secret-async", token)
    return token


def test_sync_encryption_middleware_in_an_async_function(flow: Flow) -> None:
    run = wait_for_run(flow, event_id=send("mw/secret-async", via=secret_client), timeout=60)
    assert run.status == RunStatus.COMPLETED, run.error
    assert seen["secret-async"] == [{"token": "tok-async"}]  # replayed, decrypted
    assert decrypt(run.output) == {"token": "tok-async"} and run.output[MARK] is True
    assert run.steps[0].output[MARK] is True


def test_encryption_middleware_end_to_end(flow: Flow) -> None:
    event_id = send("mw/secret", {FIELD: {"number": "4242"}, "plain": 1}, via=secret_client)
    run = wait_for_run(flow, event_id=event_id, timeout=60)
    assert run.status == RunStatus.COMPLETED, run.error

    token = {"token": "tok-4242"}
    # the function saw plain values, in every execution
    card = ("event", {"number": "4242"})
    assert seen["secret"] == [
        *[card, ("step", token)],  # execution 1: the step ran, the nap parks
        *[card, ("step", token), ("after nap", token)],  # 2: replayed; the invoke parks
        *[card, ("step", token), ("after nap", token)],  # 3: replayed to the end
    ]
    # the store holds ciphertext: the event, each step's output, the run's output
    stored = run.events[0].data
    assert stored["plain"] == 1 and decrypt(stored[FIELD]) == {"number": "4242"}
    assert stored[FIELD] != {"number": "4242"}
    steps = {s.id: s for s in run.steps}
    assert steps["tokenize"].output[MARK] is True
    assert decrypt(steps["tokenize"].output) == token
    assert run.output[MARK] is True
    assert decrypt(run.output) == {"token": token, "child": {"pin": 42}}

    # the invoked child got the payload encrypted, saw it decrypted, stored its
    # output encrypted, and the parent read that output decrypted
    assert seen["secret-child"] == [{"pin": 41}]
    [child] = flow.list_runs(function_id=secret_child.id)
    assert child.events[0].data[FIELD][MARK] is True
    assert decrypt(child.output) == {"pin": 42}

    # step.send_event went through before_send_events
    received = wait_for_run(flow, flow.list_runs(function_id=secret_received.id)[0].id, timeout=30)
    assert received.status == RunStatus.COMPLETED, received.error
    assert received.events[0].data[FIELD][MARK] is True
    assert seen["secret-received"] == [{"note": "hi"}]


# -- errors: transform_output is told of a raise (how Sentry middleware reports) ----------


class Reported(Exception):
    pass


class SentryLike(inngest.MiddlewareSync):
    """The shape of the SDK's experimental SentryMiddleware: tags from
    transform_input, errors from transform_output, the client's logger."""

    def __init__(self, client: inngest.Inngest, raw_request: object) -> None:
        super().__init__(client, raw_request)
        client.logger.info("sentry-like middleware made")  # a logger even if none given

    def transform_input(
        self,
        ctx: inngest.Context | inngest.ContextSync,
        function: inngest.Function[Any],
        steps: inngest.StepMemos,
    ) -> None:
        saw("errors", ("tags", function.local_id, ctx.event.name, ctx.run_id != ""))

    def transform_output(self, result: inngest.TransformOutputResult) -> None:
        if result.error is not None:
            step = None if result.step is None else result.step.id
            saw("errors", ("error", step, type(result.error).__name__, result.has_output()))
            if isinstance(result.error, inngest.StepError):
                result.error = Reported(f"reported: {result.error.message}")


@function("errors", middleware=[SentryLike])
def errors(ctx: inngest.ContextSync) -> None:
    def boom() -> None:
        raise ValueError("step broke")

    ctx.step.run("boom", boom)


def test_transform_output_is_told_of_errors_and_may_replace_them(flow: Flow) -> None:
    run = wait_for_run(flow, event_id=send("mw/errors"), timeout=60)
    assert run.status == RunStatus.FAILED
    assert run.error is not None
    # the step's error, then the function's (the StepError it raised), replaced
    assert run.error["type"] == "Reported"
    assert run.error["message"] == "reported: step broke"
    assert seen["errors"] == [
        ("tags", "errors", "mw/errors", True),
        ("error", "boom", "ValueError", False),
        ("error", None, "StepError", False),
    ]


def test_middleware_that_is_not_callable_is_refused() -> None:
    with pytest.raises(ValueError, match="middleware must be a list"):
        inngest.Inngest(app_id="x", middleware=["not a class"])
    with pytest.raises(ValueError, match="middleware must be a list"):
        client.create_function(
            fn_id="x", trigger=inngest.TriggerEvent(event="x"), middleware=[object()]
        )


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flow]:
    tmp = tmp_path_factory.mktemp("middleware")
    app = Celery("middleware", broker=f"celeryflow+sqlite:///{tmp}/broker.db")
    app.conf.task_default_queue = f"middleware-{tmp.name}"
    app.conf.worker_hijack_root_logger = False
    flow = Flow(
        app,
        store=f"sqlite:///{tmp}/store.db",
        retry_base="50ms",
        reconcile_interval="1s",
        redeliver_after="5s",
    )
    for c in (client, order_client, secret_client):
        inngest_celery.serve(app, c, [f for f in FUNCTIONS if f._client is c])
    with worker(flow, concurrency=4):
        yield flow
