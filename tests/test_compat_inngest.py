"""celeryflow.compat.inngest: Inngest-SDK code running on a real Celery worker.

The functions (tests/apps/inngest_app.py) are written as the Inngest Python SDK (0.5)
docs write them; only the imports differ (``from celeryflow.compat import inngest``
for ``import inngest``, ``inngest_celery.serve`` for ``inngest.flask.serve``). They
are served once on one app and worker for the module; each test sends its own events.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apps.inngest_app import (
    FUNCTIONS,
    audit_failures,
    batched,
    charge,
    client,
    compute_total,
    controlled,
    reminder,
    seen,
    throttled,
    weekly_digest,
)
from celery import Celery

from celeryflow import Flow, RunStatus, flowcontrol
from celeryflow.compat import inngest
from celeryflow.compat.inngest import celery as inngest_celery
from celeryflow.events import EventTrigger
from celeryflow.runs import Run
from celeryflow.tasks import flow_of
from celeryflow.testing import wait_for, wait_for_run, worker


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flow]:
    tmp = tmp_path_factory.mktemp("inngest")
    app = Celery("compat-test", broker=f"celeryflow+sqlite:///{tmp}/broker.db")
    app.conf.task_default_queue = f"compat-{tmp.name}"
    app.conf.worker_hijack_root_logger = False
    flow = Flow(
        app,
        store=f"sqlite:///{tmp}/store.db",
        retry_base="50ms",
        reconcile_interval="1s",
        redeliver_after="5s",
    )
    assert inngest_celery.serve(app, client, FUNCTIONS) is flow
    with worker(flow, concurrency=6):
        yield flow


def send(data: dict[str, Any], name: str) -> str:
    [event_id] = client.send_sync(inngest.Event(name=name, data=data))
    return event_id


def step(run: Run, name: str) -> Any:
    return next(s for s in run.steps if s.name == name)


def seconds(span: Any) -> float:
    return float((span.wake_at - span.started_at).total_seconds())


# -- tests -----------------------------------------------------------------------------


def test_steps_are_memoized_and_int_sleeps_are_milliseconds(flow: Flow) -> None:
    event_id = send({"key": "steps", "user_id": 7}, "app/user.created")
    run = wait_for_run(flow, event_id=event_id, timeout=20)

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {
        "user": {"id": 7, "name": "Ada"},
        "pair": [4, 10],
        "greeting": "hello Ada",
        "run_id": run.id,
    }
    assert seen["steps"] == ["fetch"]  # replayed after each sleep, run once
    assert seconds(step(run, "nap-ms")) == pytest.approx(0.5, abs=0.2)
    assert seconds(step(run, "short-nap")) == pytest.approx(0.2, abs=0.15)


def test_wait_for_event_with_if_exp_resumes_or_times_out(flow: Flow) -> None:
    waiting = send({"order_id": 1, "timeout_ms": 60_000}, "app/order.created")
    lapsing = send({"order_id": 2, "timeout_ms": 1000}, "app/order.created")
    wait_for_run(flow, event_id=waiting, status="waiting", timeout=15)
    send({"order_id": 99, "by": "mallory"}, "app/order.approved")
    send({"order_id": 1, "by": "grace"}, "app/order.approved")

    approved = wait_for_run(flow, event_id=waiting, timeout=15)
    timed_out = wait_for_run(flow, event_id=lapsing, timeout=15)

    assert approved.status == RunStatus.COMPLETED, approved.error
    assert approved.output == {"by": "grace", "name": "app/order.approved"}
    assert timed_out.status == RunStatus.COMPLETED, timed_out.error
    assert timed_out.output is None
    assert seconds(step(timed_out, "wait-for-approval")) == pytest.approx(1.0, abs=0.2)


def test_invoke_and_send_event(flow: Flow) -> None:
    event_id = send({}, "app/checkout")
    run = wait_for_run(flow, event_id=event_id, timeout=20)

    assert run.status == RunStatus.COMPLETED, run.error
    total, ids = run.output["total"], run.output["ids"]
    assert total == {"total": 6, "event": "inngest/function.invoked"}
    children = [
        r for r in flow.list_runs(function_id=compute_total.id) if r.parent_run_id == run.id
    ]
    assert sorted(c.output["total"] for c in children) == [6, 9]
    sent = wait_for_run(flow, event_id=ids[0], timeout=15)
    assert (sent.function_id, sent.output) == ("compat-test-receipt", {"total": 6})


def test_non_retriable_error_fails_the_run_and_calls_on_failure(flow: Flow) -> None:
    event_id = send({"key": "charge"}, "app/charge")
    run = wait_for_run(flow, event_id=event_id, timeout=15)
    handled = wait_for(
        lambda: [
            r
            for r in flow.list_runs(function_id=charge.on_failure_fn_id)
            if r.status == RunStatus.COMPLETED
        ],
        timeout=15,
        what="the on_failure handler",
    )
    audited = wait_for(
        lambda: [
            r.output for r in flow.list_runs(function_id=audit_failures.id) if r.output == charge.id
        ],
        timeout=15,
        what="the inngest/function.failed subscriber",
    )

    assert run.status == RunStatus.FAILED
    assert run.error is not None
    assert (run.error["type"], run.error["message"]) == ("NonRetriableError", "card declined")
    assert seen["charge"] == [0]  # retries=3, but not retried
    assert handled[0].output == {
        "event": "inngest/function.failed",
        "name": "NonRetriableError",
        "message": "card declined",
    }
    assert audited == [charge.id]


def test_retries_count_attempts_from_zero_and_step_error_is_catchable(flow: Flow) -> None:
    event_id = send({"key": "flaky"}, "app/flaky")
    run = wait_for_run(flow, event_id=event_id, timeout=20)

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"result": "ok", "failure": {"name": "ValueError", "message": "nope"}}
    attempts = [attempt for attempt, _ in seen["flaky"]]
    assert attempts == [0, 1, 2]
    waited = seen["flaky"][1][1] - seen["flaky"][0][1]
    assert 0.3 <= waited < 5  # RetryAfterError(…, 300) is 300 ms
    assert step(run, "always-fails").attempts == 3  # retries=2


def test_a_failed_parallel_branch_raises_step_error_naming_the_original_error(
    flow: Flow,
) -> None:
    run = wait_for_run(flow, event_id=send({}, "app/fan-out"), timeout=15)

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"name": "ZeroDivisionError", "message": "division by zero", "branch": 1}


def test_cancel_with_if_exp_cancels_only_the_matching_run(flow: Flow) -> None:
    config = flow.functions[reminder.id].config.cancel_on[0]
    assert (config.event, config.match, config.timeout) == (
        "app/reminder.deleted",
        "data.reminder_id",
        datetime.timedelta(minutes=5),
    )
    doomed = send({"reminder_id": "r1"}, "app/reminder.set")
    kept = send({"reminder_id": "r2"}, "app/reminder.set")
    wait_for_run(flow, event_id=doomed, status="sleeping", timeout=15)
    wait_for_run(flow, event_id=kept, status="sleeping", timeout=15)
    send({"reminder_id": "r1"}, "app/reminder.deleted")

    assert wait_for_run(flow, event_id=doomed, timeout=15).status == RunStatus.CANCELLED
    assert flow.list_runs(event_id=kept)[0].status == RunStatus.SLEEPING


def test_flow_control_options_pass_through_in_milliseconds(flow: Flow) -> None:
    throttle = flow.functions[throttled.id].config
    assert throttle.throttle == flowcontrol.Throttle(
        limit=1, period=datetime.timedelta(milliseconds=500), burst=1
    )
    assert throttle.concurrency == [flowcontrol.Concurrency(limit=2, key="event.data.customer")]

    config = flow.functions[controlled.id].config
    [trigger] = config.triggers
    assert isinstance(trigger, EventTrigger)
    assert (trigger.name, trigger.if_) == ("app/controlled", "event.data.ok == true")
    assert config.rate_limit == flowcontrol.RateLimit(
        limit=10, period=datetime.timedelta(hours=1), key="event.data.u"
    )
    assert config.debounce == flowcontrol.Debounce(
        period=datetime.timedelta(seconds=2), timeout=datetime.timedelta(minutes=1)
    )
    assert config.priority == flowcontrol.Priority(run="event.data.vip ? 120 : 0")
    assert config.idempotency == "event.data.order_id"
    assert config.singleton == flowcontrol.Singleton(key="event.data.u", mode="cancel")
    assert config.timeouts is not None
    assert config.timeouts.start == datetime.timedelta(seconds=1.5)
    assert config.timeouts.finish == datetime.timedelta(minutes=2)
    # not the simple equality form: kept as a condition, no indexed match
    assert (config.cancel_on[0].match, config.cancel_on[0].if_) == (
        None,
        "async.data.level > event.data.level",
    )
    assert flow.functions[batched.id].config.batch_events == flowcontrol.Batch(
        max_size=50, timeout=datetime.timedelta(seconds=5), key="event.data.u"
    )

    # the throttle period is 500 ms, not 500 s: three runs start about 0.5 s apart
    ids = [send({"n": n, "customer": "c1"}, "app/throttled") for n in range(3)]
    runs = [wait_for_run(flow, event_id=i, timeout=15) for i in ids]
    assert [r.output for r in runs] == [0, 1, 2]
    starts = sorted(r.started_at for r in runs if r.started_at is not None)
    assert 0.8 <= (starts[-1] - starts[0]).total_seconds() < 5


def test_cron_trigger_is_registered_with_its_time_zone(flow: Flow) -> None:
    [trigger] = flow.functions[weekly_digest.id].crons
    assert (trigger.expression, trigger.tz) == ("0 12 * * 5", "Europe/Paris")
    assert flow.has_crons()


def test_async_function_with_context(flow: Flow) -> None:
    event_id = send({"user_id": 3}, "app/async")
    run = wait_for_run(flow, event_id=event_id, timeout=20)

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {
        "user": {"id": 3, "plan": "pro"},
        "updated": 42,
        "sent": "sent",
        "total": 9,
    }
    assert seconds(step(run, "pause")) == pytest.approx(0.3, abs=0.15)


def test_unsupported_parts_fail_with_an_error_naming_them(flow: Flow) -> None:
    cases: list[tuple[str, Any]] = [
        (
            "Batch(if_exp=...)",
            lambda: client.create_function(
                fn_id="x",
                trigger=inngest.TriggerEvent(event="x"),
                batch_events=inngest.Batch(max_size=2, timeout=100, if_exp="true"),
            ),
        ),
    ]
    for thing, attempt in cases:
        with pytest.raises(inngest.NotSupportedError, match=re.escape(f"{thing} is not supported")):
            attempt()

    # a celeryflow model, whose bare numbers are seconds, is refused rather than misread
    with pytest.raises(ValueError, match=r"throttle must be inngest\.Throttle"):
        client.create_function(
            fn_id="x",
            trigger=inngest.TriggerEvent(event="x"),
            throttle=flowcontrol.Throttle(limit=1, period=60),  # type: ignore[arg-type]
        )

    # found only inside a run: the run fails at once, naming it
    run = wait_for_run(flow, event_id=send({}, "app/ai"), timeout=15)
    assert run.status == RunStatus.FAILED
    assert run.error is not None
    assert "step.ai.infer is not supported" in run.error["message"]
    assert run.attempt == 0


def test_serve_makes_a_flow_and_sending_before_serve_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shop = inngest.Inngest(app_id="shop")

    @shop.create_function(fn_id="hello", trigger=inngest.TriggerEvent(event="shop/hello"))
    def hello(ctx: inngest.ContextSync) -> str:
        return "hi"

    with pytest.raises(inngest.NotServedError, match=r"call celeryflow\.compat\.inngest"):
        shop.send_sync(inngest.Event(name="shop/hello"))

    monkeypatch.setenv("CELERYFLOW_STORE", f"sqlite:///{tmp_path}/store.db")
    app = Celery("compat-serve")
    made = inngest_celery.serve(app, shop, [hello])
    assert flow_of(app) is made
    assert inngest_celery.serve(app, shop, [hello]) is made  # serving again is harmless
    assert list(made.functions) == ["shop-hello"]

    [event_id] = shop.send_sync(inngest.Event(name="shop/hello", data={"n": 1}))
    [queued] = made.list_runs(event_id=event_id)
    assert (queued.function_id, queued.status) == ("shop-hello", RunStatus.QUEUED)
