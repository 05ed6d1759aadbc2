"""Retries as Celery users know them: a fixed retry delay per function or step, the
user's own exception type in the stored error, and on_failure handlers that get the
failed run's event as ctx.event. On a real worker (embedded stack)."""

from __future__ import annotations

import itertools
import time

import pytest
from flowkit import make_flow
from services import Stack

from celeryflow import ConfigError, Event, RetryAfterError, RunStatus, event
from celeryflow.testing import wait_for, wait_for_run, worker

pytestmark = pytest.mark.parametrize("stack", ["embedded"], indirect=True)


class ApplicationError(Exception):
    """A team's own exception type."""


def gaps(times: list[float]) -> list[float]:
    return [round(b - a, 2) for a, b in itertools.pairwise(times)]


def test_function_retry_delay_replaces_the_exponential_back_off(stack: Stack) -> None:
    flow = make_flow(stack)  # retry_base 50 ms: without retry_delay, retries come at once
    step_tries: list[float] = []
    body_tries: list[float] = []

    def flaky() -> str:
        step_tries.append(time.monotonic())
        if len(step_tries) < 3:
            raise ApplicationError("not yet")
        return "ok"

    @flow.function(id="steady", trigger=event("t/steady"), retries=3, retry_delay="1s")
    def steady(ctx):  # type: ignore[no-untyped-def]
        return ctx.step.run("flaky", flaky)

    @flow.function(id="body", trigger=event("t/body"), retries=2, retry_delay=1.0)
    def body(ctx):  # type: ignore[no-untyped-def]
        body_tries.append(time.monotonic())
        if len(body_tries) < 2:
            raise ApplicationError("outside any step")
        return "ok"

    with worker(flow):
        [steady_id, body_id] = flow.send([Event(name="t/steady"), Event(name="t/body")])
        run = wait_for_run(flow, event_id=steady_id, timeout=30)
        outside = wait_for_run(flow, event_id=body_id, timeout=30)

    assert run.status == RunStatus.COMPLETED, run.error
    assert [s.attempts for s in run.steps] == [3]
    assert all(1.0 <= g < 3.0 for g in gaps(step_tries)), gaps(step_tries)
    assert outside.status == RunStatus.COMPLETED, outside.error
    assert outside.attempt == 1
    assert all(1.0 <= g < 3.0 for g in gaps(body_tries)), gaps(body_tries)


def test_step_retry_delay_overrides_the_functions(stack: Stack) -> None:
    flow = make_flow(stack)
    tries: list[float] = []

    def flaky() -> str:
        tries.append(time.monotonic())
        if len(tries) < 2:
            raise ApplicationError("not yet")
        return "ok"

    @flow.function(id="quick-step", trigger=event("t/quick"), retry_delay="1h")
    def quick(ctx):  # type: ignore[no-untyped-def]
        return ctx.step.run("flaky", flaky, retry_delay="700ms")

    with worker(flow):
        [event_id] = flow.send(Event(name="t/quick"))
        run = wait_for_run(flow, event_id=event_id, timeout=30)

    assert run.status == RunStatus.COMPLETED, run.error
    assert 0.7 <= gaps(tries)[0] < 2.5, gaps(tries)


def test_retry_after_error_still_sets_its_own_delay(stack: Stack) -> None:
    flow = make_flow(stack)
    tries: list[float] = []

    def limited() -> str:
        tries.append(time.monotonic())
        if len(tries) < 2:
            raise RetryAfterError("rate limited", "200ms")
        return "ok"

    @flow.function(id="after", trigger=event("t/after"), retry_delay="1h")
    def after(ctx):  # type: ignore[no-untyped-def]
        return ctx.step.run("limited", limited)

    with worker(flow):
        [event_id] = flow.send(Event(name="t/after"))
        run = wait_for_run(flow, event_id=event_id, timeout=30)

    assert run.status == RunStatus.COMPLETED, run.error
    assert gaps(tries)[0] < 5


@pytest.mark.parametrize("bad", ["soon", -1, "3 fortnights", True])
def test_a_bad_retry_delay_fails_at_decoration_naming_the_function(
    stack: Stack, bad: object
) -> None:
    flow = make_flow(stack)
    with pytest.raises(ConfigError, match=r"'charge'.*retry_delay"):

        @flow.function(id="charge", trigger=event("t/charge"), retry_delay=bad)  # type: ignore[arg-type]
        def charge(ctx):  # type: ignore[no-untyped-def]
            return None


def test_a_bad_step_retry_delay_fails_the_run_naming_the_step(stack: Stack) -> None:
    flow = make_flow(stack)

    @flow.function(id="typo", trigger=event("t/typo"))
    def typo(ctx):  # type: ignore[no-untyped-def]
        return ctx.step.run("send", lambda: "sent", retry_delay="5 mins-ish")

    with worker(flow):
        [event_id] = flow.send(Event(name="t/typo"))
        run = wait_for_run(flow, event_id=event_id, timeout=30)

    assert run.status == RunStatus.FAILED
    assert run.error is not None
    assert run.error["type"] == "NonRetriableError"
    assert "step.run('send') retry_delay" in run.error["message"]


def test_the_stored_error_keeps_the_users_exception_type(stack: Stack) -> None:
    flow = make_flow(stack)

    def charge() -> None:
        raise ApplicationError("card declined")

    @flow.function(id="in-step", trigger=event("t/error"), retries=1, retry_delay="10ms")
    def in_step(ctx):  # type: ignore[no-untyped-def]
        ctx.step.run("charge", charge)

    @flow.function(id="wrapped", trigger=event("t/error"), retries=0)
    def wrapped(ctx):  # type: ignore[no-untyped-def]
        try:
            charge()
        except ApplicationError as exc:
            raise RetryAfterError("try later", "1s") from exc

    @flow.function(id="watch", trigger=event("celeryflow/function.failed"))
    def watch(ctx):  # type: ignore[no-untyped-def]
        return ctx.event.data["error"]

    with worker(flow):
        [event_id] = flow.send(Event(name="t/error"))
        runs = wait_for(
            lambda: (
                found
                if len(found := flow.list_runs(event_id=event_id)) == 2
                and all(r.status == RunStatus.FAILED for r in found)
                else None
            ),
            timeout=30,
            what="both runs to fail",
        )
        watched = wait_for(
            lambda: (
                found
                if len(found := flow.list_runs(function_id="watch", status="completed")) == 2
                else None
            ),
            timeout=30,
            what="both failures to be broadcast",
        )

    errors = {r.function_id: r.error for r in runs}
    step_error = errors["in-step"]
    assert step_error is not None
    assert (step_error["type"], step_error["module"]) == ("ApplicationError", __name__)
    assert step_error["message"] == "card declined"
    assert (step_error["step"], step_error["raised_as"]) == ("charge", "StepError")
    assert "ApplicationError: card declined" in step_error["traceback"]
    body_error = errors["wrapped"]
    assert body_error is not None
    assert (body_error["type"], body_error["raised_as"]) == ("ApplicationError", "RetryAfterError")
    assert body_error["message"] == "card declined"
    broadcast = sorted(w.output["type"] for w in watched)
    assert broadcast == ["ApplicationError", "ApplicationError"]
    assert all("traceback" not in w.output for w in watched)


def test_on_failure_handlers_get_the_failed_runs_event(stack: Stack) -> None:
    flow = make_flow(stack)

    @flow.function(id="notify", retries=0)
    def notify(ctx):  # type: ignore[no-untyped-def]
        failure = ctx.failure
        return {
            "name": ctx.event.name,
            "email": ctx.event.data["email"],
            "events": len(ctx.events),
            "run": failure.run_id,
            "function": failure.function_id,
            "error": [failure.error["type"], failure.error["message"], failure.error["step"]],
            "raw": [failure.event.name, failure.event.data["event"]["data"]["email"]],
        }

    @flow.function(id="signup", trigger=event("user/signed_up"), retries=0, on_failure=notify)
    async def signup(ctx):  # type: ignore[no-untyped-def]
        def send() -> None:
            raise ApplicationError("mailbox full")

        await ctx.step.run("welcome", send)

    with worker(flow):
        [event_id] = flow.send(Event(name="user/signed_up", data={"email": "a@b.c"}))
        failed = wait_for_run(flow, event_id=event_id, timeout=30)
        [handled] = wait_for(
            lambda: flow.list_runs(function_id="notify", status="completed"),
            timeout=30,
            what="the on_failure handler",
        )

    assert failed.status == RunStatus.FAILED
    assert handled.output == {
        "name": "user/signed_up",
        "email": "a@b.c",
        "events": 1,
        "run": failed.id,
        "function": "signup",
        "error": ["ApplicationError", "mailbox full", "welcome"],
        "raw": ["celeryflow/function.failed", "a@b.c"],
    }
