"""``Concurrency(scope="shared")``: one limit across functions, by key (Inngest's
``env``/``account`` scope, and the facade's), on a real worker with free threads."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from celery import Celery

from celeryflow import Concurrency, ConfigError, Event, Flow, RunStatus, event
from celeryflow.compat import inngest
from celeryflow.compat.inngest import celery as inngest_celery
from celeryflow.testing import wait_for, wait_for_run, worker

gate = threading.Event()
started: list[str] = []
lock = threading.Lock()


def hold(tag: str) -> str:
    with lock:
        started.append(tag)
    if tag.startswith("holder"):
        assert gate.wait(30), "the test never opened the gate"
    return tag


API = Concurrency(limit=1, key='"api"', scope="shared")

client = inngest.Inngest(app_id="scope")


@client.create_function(
    fn_id="sdk",
    trigger=inngest.TriggerEvent(event="scope/sdk"),
    concurrency=[inngest.Concurrency(limit=1, key='"api"', scope="account")],
)
def sdk_user(ctx: inngest.ContextSync) -> str:
    return str(ctx.step.run("call", hold, "sdk"))


def define(flow: Flow) -> None:
    for fn_id in ("holder", "sharer"):

        @flow.function(id=fn_id, trigger=event(f"scope/{fn_id}"), concurrency=API)
        def shared(ctx, fn_id: str = fn_id):  # type: ignore[no-untyped-def]
            return ctx.step.run("call", hold, fn_id)

    # the same key, but its own function's limit: not held back by the others
    @flow.function(
        id="own", trigger=event("scope/own"), concurrency=Concurrency(limit=1, key='"api"')
    )
    def own(ctx):  # type: ignore[no-untyped-def]
        return ctx.step.run("call", hold, "own")


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flow]:
    tmp = tmp_path_factory.mktemp("scope")
    app = Celery("scope", broker=f"celeryflow+sqlite:///{tmp}/broker.db")
    app.conf.task_default_queue = f"scope-{tmp.name}"
    app.conf.worker_hijack_root_logger = False
    flow = Flow(app, store=f"sqlite:///{tmp}/store.db", reconcile_interval="500ms")
    define(flow)
    inngest_celery.serve(app, client, [sdk_user])
    with worker(flow, concurrency=6):
        yield flow
    gate.set()


def send(flow: Flow, name: str) -> str:
    [event_id] = flow.send(Event(name=name))
    return event_id


def test_a_shared_limit_holds_across_functions(flow: Flow) -> None:
    holder = send(flow, "scope/holder")
    wait_for(lambda: "holder" in started, timeout=30, what="the holder's step")
    sharer = send(flow, "scope/sharer")
    sdk = send(flow, "scope/sdk")
    own = send(flow, "scope/own")
    # the function-scoped limit on the same key runs beside the holder
    assert wait_for_run(flow, event_id=own, timeout=30).output == "own"
    for waiting in (sharer, sdk):
        [run] = flow.list_runs(event_id=waiting)
        assert run.status == RunStatus.QUEUED, run
    assert "sharer" not in started and "sdk" not in started
    gate.set()
    for done in (holder, sharer, sdk):
        assert wait_for_run(flow, event_id=done, timeout=30).status == RunStatus.COMPLETED
    assert started.index("holder") < min(started.index("sharer"), started.index("sdk"))


def test_a_shared_limit_needs_a_key() -> None:
    with pytest.raises(ValueError, match=r"scope='shared'\) needs a key"):
        Concurrency(limit=1, scope="shared")
    with pytest.raises(ConfigError, match=r"scope='shared'\) needs a key"):
        client.create_function(
            fn_id="keyless",
            trigger=inngest.TriggerEvent(event="scope/none"),
            concurrency=[inngest.Concurrency(limit=1, scope="env")],
        )
