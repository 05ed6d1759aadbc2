"""OpenTelemetry traces (celeryflow/tracing.py) on a real worker: the sender's span,
each execution of the run, its steps, and its children (invoke, parallel branches)
are one trace, each span under the right parent. An in-process worker shares the
SDK's in-memory exporter with the test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flowkit import make_flow
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from services import Stack

from celeryflow import Event, Flow, RunStatus, event
from celeryflow.testing import wait_for, wait_for_run, worker
from celeryflow.tracing import TracingHook


@pytest.fixture
def traced() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def define(flow: Flow) -> None:
    @flow.function(id="child", trigger=event("trace/never"))
    def child(ctx: Any) -> int:
        return int(ctx.step.run("c", lambda: 3))

    @flow.function(id="traced", trigger=event("trace/go"), retries=1, retry_delay="50ms")
    def traced_fn(ctx: Any) -> Any:
        ctx.step.run("a", lambda: 1)
        got = ctx.step.invoke("call", function="child", data={})
        both = ctx.step.parallel(
            "fan", [lambda: ctx.step.run("b0", lambda: 0), lambda: ctx.step.run("b1", lambda: 1)]
        )
        return [got, both]

    @flow.function(id="failing", trigger=event("trace/fail"), retries=0)
    def failing(ctx: Any) -> None:
        ctx.step.run("boom", lambda: 1 / 0)


def by_name(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
def test_send_run_steps_and_children_are_one_trace(
    stack: Stack, traced: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = traced
    flow = make_flow(stack)
    flow.add_hook(TracingHook(tracer_provider=provider))
    define(flow)
    tracer = provider.get_tracer("test")
    with worker(flow):
        with tracer.start_as_current_span("send") as send:
            [event_id] = flow.send(Event(name="trace/go"))
        run = wait_for_run(flow, event_id=event_id, timeout=60)
        assert run.status == RunStatus.COMPLETED, run.error
        # the last execution's span ends just after the run's end is written
        wait_for(
            lambda: any(
                s.attributes.get("celeryflow.run_id") == run.id
                and s.attributes.get("celeryflow.status") == "completed"
                for s in exporter.get_finished_spans()
            ),
            what="the last execution's span",
        )
    spans = list(exporter.get_finished_spans())
    trace_id = send.get_span_context().trace_id
    assert {s.context.trace_id for s in spans} == {trace_id}, [s.name for s in spans]
    ids = {s.context.span_id: s for s in spans}

    def parent(span: ReadableSpan) -> ReadableSpan:
        assert span.parent is not None, span.name
        return ids[span.parent.span_id]

    # the run executed three times (parked on the invoke, then on the branches); each
    # execution is a span under the send, carrying the run
    executions = [
        s for s in by_name(spans, "run traced") if s.attributes["celeryflow.run_id"] == run.id
    ]
    assert len(executions) == 3, [s.attributes for s in executions]
    for execution in executions:
        assert parent(execution).name == "send"
        assert execution.attributes["celeryflow.run_id"] == run.id
        assert execution.attributes["celeryflow.function_id"] == "traced"
        assert execution.attributes["celeryflow.attempt"] == 0
    statuses = sorted(
        f"{s.attributes['celeryflow.status']}:{s.attributes.get('celeryflow.park_reason', '')}"
        for s in executions
    )
    assert statuses == ["completed:", "parked:invoke", "parked:parallel"]
    first = next(s for s in executions if s.attributes.get("celeryflow.park_reason") == "invoke")
    assert first.attributes["celeryflow.first_execution"] is True
    [a] = by_name(spans, "step a")
    assert parent(a) is first
    assert a.attributes["celeryflow.step_id"] == "a"
    assert a.attributes["celeryflow.step_attempt"] == 1
    assert a.attributes["celeryflow.status"] == "completed"
    # the invoked child: its execution under the execution that invoked it
    [child] = by_name(spans, "run child")
    assert parent(child) is first
    assert child.attributes["celeryflow.parent_run_id"] == run.id
    [c] = by_name(spans, "step c")
    assert parent(c) is child
    # the parallel branches: each under the execution that started them
    second = next(s for s in executions if s.attributes.get("celeryflow.park_reason") == "parallel")
    for step in ("b0", "b1"):
        [branch_step] = by_name(spans, f"step {step}")
        branch = parent(branch_step)
        assert branch.name == "run traced" and branch not in executions
        assert parent(branch) is second


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
def test_a_failed_step_and_run_are_error_spans(
    stack: Stack, traced: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = traced
    flow = make_flow(stack)
    flow.add_hook(TracingHook(tracer_provider=provider))
    define(flow)
    with worker(flow):
        [event_id] = flow.send(Event(name="trace/fail"))  # no span: the run starts a trace
        assert wait_for_run(flow, event_id=event_id, timeout=60).status == RunStatus.FAILED
        wait_for(lambda: by_name(list(exporter.get_finished_spans()), "run failing"), what="span")
    spans = list(exporter.get_finished_spans())
    [run] = by_name(spans, "run failing")
    [step] = by_name(spans, "step boom")
    assert run.parent is None
    assert step.parent is not None and step.parent.span_id == run.context.span_id
    assert run.status.status_code == StatusCode.ERROR
    assert run.attributes["celeryflow.status"] == "failed"
    assert step.status.status_code == StatusCode.ERROR
    assert step.attributes["celeryflow.status"] == "failed"


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
def test_an_execution_joins_the_celery_instrumentations_span(
    stack: Stack, traced: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    """opentelemetry-instrumentation-celery puts the publisher's context in the
    doorbell message's headers and makes ``run/celeryflow.run`` current in the
    worker: the execution becomes its child, in the sender's trace."""
    provider, exporter = traced
    flow = make_flow(stack)
    flow.add_hook(TracingHook(tracer_provider=provider))

    @flow.function(id="joined", trigger=event("trace/joined"))
    def joined(ctx: Any) -> int:
        return int(ctx.step.run("x", lambda: 1))

    instrumentor = CeleryInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        with worker(flow):
            with provider.get_tracer("test").start_as_current_span("send") as send:
                [event_id] = flow.send(Event(name="trace/joined"))
            run = wait_for_run(flow, event_id=event_id, timeout=60)
            assert run.status == RunStatus.COMPLETED, run.error
            wait_for(
                lambda: by_name(list(exporter.get_finished_spans()), "run/celeryflow.run"),
                what="the Celery task's span",
            )
    finally:
        instrumentor.uninstrument()
    spans = list(exporter.get_finished_spans())
    ids = {s.context.span_id: s for s in spans}
    [execution] = by_name(spans, "run joined")
    chain = []
    span: ReadableSpan | None = execution
    while span is not None:
        chain.append(span.name)
        span = ids.get(span.parent.span_id) if span.parent is not None else None
    assert chain == ["run joined", "run/celeryflow.run", "apply_async/celeryflow.run", "send"]
    [step] = by_name(spans, "step x")
    assert step.parent is not None and step.parent.span_id == execution.context.span_id
    assert execution.context.trace_id == send.get_span_context().trace_id
