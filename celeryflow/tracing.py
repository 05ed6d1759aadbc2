"""OpenTelemetry traces for celeryflow, as a hook-layer plugin (the ``[otel]`` extra).

    from celeryflow.tracing import TracingHook

    flow = Flow(app, hooks=[TracingHook()])

A run can sleep for days and resume in another process, so one span cannot cover it
(a span is ended by the process that started it). As Temporal's tracing does, each
**execution** of a run is a span (``run <function id>``), and each ``step.run``
attempt is a span under it (``step <step id>``); all the executions of a run share
one parent, so a trace shows the sender, then every execution of the run and its
steps, then its children's.

The trace context travels in the run, not in the broker message: :meth:`carry`
injects the current context (W3C ``traceparent``, with the globally configured
propagator) when the run is created, the store keeps it with the run
(``cf_runs.context``), and every execution extracts it. So the context of
``flow.send()``'s caller becomes the parent of the run's executions, and an
execution's span is current while the run's code runs, so a ``step.invoke``,
``step.parallel`` branch or ``flow.send`` inside it carries that execution's span
to the runs it creates.

With ``opentelemetry-instrumentation-celery`` installed, the doorbell's
``celeryflow.run`` task gets its own spans: the instrumentation injects the
publisher's context into the task message's headers and, in the worker, makes a
``run/celeryflow.run`` span current around the task. An execution joins that span
(as its child) when it belongs to the run's trace (the doorbell rung by the sender
or by a parent run); a doorbell rung by the reconciler or a retry starts an
unrelated trace, so then the execution keeps the run's stored parent and only
*links* to the Celery span.

Attributes: ``celeryflow.function_id``, ``celeryflow.run_id``, ``celeryflow.attempt``,
``celeryflow.status`` (the run's end, or ``parked``, with ``celeryflow.park_reason``),
and for steps ``celeryflow.step_id``, ``celeryflow.step_key``,
``celeryflow.step_attempt``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

from .hooks import (
    EventReceived,
    Hook,
    RunFinished,
    RunInfo,
    RunParked,
    RunQueued,
    RunStarted,
    StepFinished,
    StepInfo,
    StepRetried,
    StepStarted,
)

__all__ = ["TRACER_NAME", "TracingHook"]

TRACER_NAME = "celeryflow"


@dataclass
class _Open:
    """A span this thread started and made current, with the token to undo that."""

    span: Span
    token: object


@dataclass
class _Thread:
    run: _Open | None = None
    run_id: str | None = None
    steps: list[_Open] = field(default_factory=list)


class TracingHook(Hook):
    """Spans for run executions and steps, and the trace context carried with runs.
    ``tracer_provider``: the provider to use (default: the global one)."""

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer(TRACER_NAME, tracer_provider=tracer_provider)
        self._local = threading.local()

    def _state(self) -> _Thread:
        state: _Thread | None = getattr(self._local, "state", None)
        if state is None:
            state = self._local.state = _Thread()
        return state

    # -- the sender's side --------------------------------------------------------------

    def carry(self) -> dict[str, str]:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        return carrier

    def event_received(self, info: EventReceived) -> None:
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event(
                "celeryflow.event",
                {
                    "celeryflow.event.name": info.event.name,
                    "celeryflow.event.id": info.event.id or "",
                },
            )

    def run_queued(self, info: RunQueued) -> None:
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event(
                "celeryflow.run_queued",
                {"celeryflow.function_id": info.function_id, "celeryflow.run_id": info.run_id},
            )

    # -- an execution ---------------------------------------------------------------------

    def run_started(self, info: RunStarted) -> None:
        state = self._state()
        self._close_all(state)  # a previous execution in this thread that was not closed
        stored = propagate.extract(info.context)
        stored_span = trace.get_current_span(stored).get_span_context()
        current = trace.get_current_span().get_span_context()
        links: list[Link] = []
        if current.is_valid and (
            not stored_span.is_valid or current.trace_id == stored_span.trace_id
        ):
            parent = otel_context.get_current()  # the Celery task's span, in this trace
        else:
            parent = stored
            if current.is_valid:
                links.append(Link(current))
        attributes: dict[str, Any] = {
            **_run_attributes(info),
            "celeryflow.first_execution": info.first,
        }
        span = self._tracer.start_span(
            f"run {info.function_id}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=links,
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        state.run, state.run_id = _Open(span, token), info.run_id

    def run_parked(self, info: RunParked) -> None:
        attributes: dict[str, Any] = {
            "celeryflow.status": "parked",
            "celeryflow.park_reason": info.reason,
        }
        if info.step_id is not None:
            attributes["celeryflow.step_id"] = info.step_id
        if info.wake_at is not None:
            attributes["celeryflow.wake_at"] = info.wake_at.isoformat()
        self._end_run(attributes, None)

    def run_finished(self, info: RunFinished) -> None:
        state = self._state()
        if state.run is None or state.run_id != info.run_id:
            # recorded skipped by flow control (it never executes), told where it was
            # created: a span of its own under the creator's
            span = self._tracer.start_span(
                f"run {info.function_id}",
                kind=SpanKind.CONSUMER,
                attributes={**_run_attributes(info), "celeryflow.status": info.status},
            )
            span.end()
            return
        error = (info.error or "failed") if info.status == "failed" else None
        self._end_run({"celeryflow.status": info.status}, error)

    def _end_run(self, attributes: dict[str, Any], error: str | None) -> None:
        state = self._state()
        self._close_steps(state)
        if state.run is None:
            return
        opened, state.run, state.run_id = state.run, None, None
        opened.span.set_attributes(attributes)
        if error is not None:
            opened.span.set_status(Status(StatusCode.ERROR, error))
        opened.span.end()
        _detach(opened)

    # -- steps ----------------------------------------------------------------------------

    def step_started(self, info: StepStarted) -> None:
        state = self._state()
        span = self._tracer.start_span(f"step {info.step_id}", attributes=_step_attributes(info))
        token = otel_context.attach(trace.set_span_in_context(span))
        state.steps.append(_Open(span, token))

    def step_finished(self, info: StepFinished) -> None:
        error = (info.error or "error") if info.status == "failed" else None
        self._end_step({"celeryflow.status": info.status}, error)

    def step_retried(self, info: StepRetried) -> None:
        attributes: dict[str, Any] = {"celeryflow.status": "retried"}
        if info.wake_at is not None:
            attributes["celeryflow.wake_at"] = info.wake_at.isoformat()
        self._end_step(attributes, info.error or "error")

    def _end_step(self, attributes: dict[str, Any], error: str | None) -> None:
        state = self._state()
        if not state.steps:
            return
        opened = state.steps.pop()
        opened.span.set_attributes(attributes)
        if error is not None:
            opened.span.set_status(Status(StatusCode.ERROR, error))
        opened.span.end()
        _detach(opened)

    def _close_steps(self, state: _Thread) -> None:
        while state.steps:  # a step left by a lost lease or a release
            opened = state.steps.pop()
            opened.span.set_attribute("celeryflow.status", "interrupted")
            opened.span.end()
            _detach(opened)

    def _close_all(self, state: _Thread) -> None:
        self._close_steps(state)
        if state.run is not None:
            opened, state.run, state.run_id = state.run, None, None
            opened.span.set_attribute("celeryflow.status", "interrupted")
            opened.span.end()
            _detach(opened)


def _run_attributes(info: RunInfo) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "celeryflow.function_id": info.function_id,
        "celeryflow.run_id": info.run_id,
        "celeryflow.attempt": info.attempt,
        "celeryflow.event.name": info.event.name,
    }
    if info.parent_run_id is not None:
        attributes["celeryflow.parent_run_id"] = info.parent_run_id
    return attributes


def _step_attributes(info: StepInfo) -> dict[str, Any]:
    return {
        "celeryflow.function_id": info.function_id,
        "celeryflow.run_id": info.run_id,
        "celeryflow.step_id": info.step_id,
        "celeryflow.step_key": info.key,
        "celeryflow.step_attempt": info.attempt,
    }


def _detach(opened: _Open) -> None:
    otel_context.detach(opened.token)  # type: ignore[arg-type]
