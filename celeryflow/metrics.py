"""Prometheus metrics for celeryflow, as a hook-layer plugin (the ``[prometheus]`` extra).

    from celeryflow.metrics import PrometheusHook

    flow = Flow(app, hooks=[PrometheusHook()])

What is counted where it happens (in the process of the hook, see
:mod:`celeryflow.hooks`): runs started and ended by status, executions parked by
reason, step durations, step retries, queue lag, the reconciler's rings. What is a
level, not an event (how many runs are queued, running, sleeping or waiting now), is
read from the store at scrape time by :class:`StoreCollector`: one grouped count,
right whatever process counted what, and right after a worker restart. Processes
counting ups and downs would drift as soon as one dies between the two.

Under Celery's prefork pool each child counts in its own memory, so set
``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess mode) to an empty
directory before the worker starts (before anything imports prometheus_client): every
process writes its values to files there and a scrape adds them up (:func:`registry`
does). Empty it before each worker start, in the start script, as prometheus_client
asks (the counters are totals since then); README "Metrics" shows how.

Expose the metrics with :func:`start_http_server` (for instance in the worker's main
process) or mount :func:`asgi_app` at ``/metrics`` in an ASGI application (the
dashboard does).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, make_asgi_app
from prometheus_client import start_http_server as _start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import REGISTRY, Collector

from .hooks import (
    Hook,
    Reconciled,
    RunFinished,
    RunParked,
    RunStarted,
    StepFinished,
    StepRetried,
)
from .runs import RunStatus

if TYPE_CHECKING:
    from .flow import Flow

__all__ = [
    "ACTIVE_STATUSES",
    "MULTIPROC_ENV",
    "PrometheusHook",
    "StoreCollector",
    "asgi_app",
    "registry",
    "start_http_server",
]

log = logging.getLogger("celeryflow.metrics")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
ACTIVE_STATUSES = (
    RunStatus.QUEUED.value,
    RunStatus.RUNNING.value,
    RunStatus.SLEEPING.value,
    RunStatus.WAITING.value,
)
# Seconds: a step is often milliseconds (an HTTP call), sometimes minutes.
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
# Queue lag spans a hot queue (milliseconds) to a backlog or a throttle (hours).
LAG_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400)

# Created once per process, in the default registry; under multiprocess mode their
# values go to files in PROMETHEUS_MULTIPROC_DIR instead.
RUNS_STARTED = Counter("celeryflow_runs_started", "Runs executed for the first time.", ["function"])
RUNS_FINISHED = Counter(
    "celeryflow_runs_finished",
    "Runs ended, by status: completed, failed, cancelled or skipped.",
    ["function", "status"],
)
RUNS_PARKED = Counter(
    "celeryflow_runs_parked",
    "Executions that left the worker without ending the run, by reason "
    "(sleep, wait, invoke, task, parallel, retry, lost, released).",
    ["function", "reason"],
)
RUN_RETRIES = Counter(
    "celeryflow_run_retries", "Function bodies that failed and will be retried.", ["function"]
)
STEP_RETRIES = Counter(
    "celeryflow_step_retries", "Step attempts that failed and will be retried.", ["function"]
)
STEP_SECONDS = Histogram(
    "celeryflow_step_duration_seconds",
    "Duration of step attempts, by outcome: completed, failed (for good) or retried.",
    ["function", "status"],
    buckets=STEP_BUCKETS,
)
EXECUTION_SECONDS = Histogram(
    "celeryflow_execution_duration_seconds",
    "Duration of one execution of a run (claim to park or end).",
    ["function"],
    buckets=STEP_BUCKETS,
)
QUEUE_LAG = Histogram(
    "celeryflow_queue_lag_seconds",
    "From a run's creation to its first start (includes any delay it was given: "
    "throttle, debounce, not_before, a concurrency slot).",
    ["function"],
    buckets=LAG_BUCKETS,
)
RECONCILER_RINGS = Counter(
    "celeryflow_reconciler_rings",
    "Doorbells the reconciler rang again, by kind: due (overdue runs), recovered "
    "(left running by a lost executor) and slot (a concurrency slot was free).",
    ["kind"],
)
RECONCILER_PASSES = Counter("celeryflow_reconciler_passes", "Reconciler passes.")


class PrometheusHook(Hook):
    """Counts runs, steps and reconciler passes into prometheus_client's metrics.
    Register one per Flow, where the functions are defined (senders and workers)."""

    def __init__(self) -> None:
        # a step retry parks the run with reason "retry" too: only a park without one
        # just before is the body's retry (per thread: one run per thread at a time)
        self._local = threading.local()

    def run_started(self, info: RunStarted) -> None:
        self._local.step_retried = False
        if info.first:
            RUNS_STARTED.labels(info.function_id).inc()
            if info.created_at is not None:
                lag = (_utcnow() - info.created_at).total_seconds()
                QUEUE_LAG.labels(info.function_id).observe(max(0.0, lag))

    def run_parked(self, info: RunParked) -> None:
        RUNS_PARKED.labels(info.function_id, info.reason).inc()
        EXECUTION_SECONDS.labels(info.function_id).observe(info.duration)
        if info.reason == "retry" and not getattr(self._local, "step_retried", False):
            RUN_RETRIES.labels(info.function_id).inc()

    def run_finished(self, info: RunFinished) -> None:
        RUNS_FINISHED.labels(info.function_id, info.status).inc()
        if info.executed:
            EXECUTION_SECONDS.labels(info.function_id).observe(info.duration)

    def step_finished(self, info: StepFinished) -> None:
        STEP_SECONDS.labels(info.function_id, info.status).observe(info.duration)

    def step_retried(self, info: StepRetried) -> None:
        self._local.step_retried = True
        STEP_RETRIES.labels(info.function_id).inc()
        STEP_SECONDS.labels(info.function_id, "retried").observe(info.duration)

    def reconciled(self, info: Reconciled) -> None:
        RECONCILER_PASSES.inc()
        for kind, count in (
            ("due", info.rung - info.recovered),
            ("recovered", info.recovered),
            ("slot", info.slots),
        ):
            if count:
                RECONCILER_RINGS.labels(kind).inc(count)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class StoreCollector(Collector):
    """``celeryflow_runs{function, status}``: runs queued, running, sleeping and
    waiting now, read from ``flow``'s store at each scrape (one grouped count). A
    store that cannot be read gives ``celeryflow_store_up 0`` and no counts."""

    def __init__(self, flow: Flow) -> None:
        self.flow = flow

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("celeryflow_store_up", "1 if the store answered this scrape.")
        try:
            counts = self.flow.store.count_by_status(ACTIVE_STATUSES)
        except Exception as exc:
            log.warning("metrics: the store could not be read: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        runs = GaugeMetricFamily(
            "celeryflow_runs",
            "Runs not ended, by function and status (queued, running, sleeping, waiting).",
            labels=["function", "status"],
        )
        functions = set(self.flow.functions) | {f for f, _ in counts}
        for function in sorted(functions):
            for status in ACTIVE_STATUSES:
                runs.add_metric([function, status], counts.get((function, status), 0))
        yield runs


class _Together(Collector):
    """Several collectors as one (the default registry and the store's gauges)."""

    def __init__(self, sources: Iterable[Collector]) -> None:
        self.sources = list(sources)

    def collect(self) -> Iterator[Metric]:
        for source in self.sources:
            yield from source.collect()


def registry(flow: Flow | None = None) -> CollectorRegistry:
    """What a scrape shows: every process's values under multiprocess mode (read from
    ``PROMETHEUS_MULTIPROC_DIR``), else this process's default registry; with
    ``flow``, its store's gauges as well."""
    scrape = CollectorRegistry()
    if os.environ.get(MULTIPROC_ENV):
        MultiProcessCollector(scrape)  # type: ignore[no-untyped-call]
    else:
        scrape.register(_Together([REGISTRY]))
    if flow is not None:
        scrape.register(StoreCollector(flow))
    return scrape


def start_http_server(port: int, flow: Flow | None = None, addr: str = "0.0.0.0") -> Any:
    """Serve :func:`registry` on ``http://addr:port/metrics`` from a daemon thread of
    this process; returns the server (``.shutdown()`` stops it). Call it in one
    process per host, such as the worker's main process (README "Metrics")."""
    server, _thread = _start_http_server(port, addr=addr, registry=registry(flow))
    return server


def asgi_app(flow: Flow | None = None) -> Any:
    """An ASGI application answering with :func:`registry`'s metrics, to mount at
    ``/metrics`` (Starlette: ``Mount("/metrics", app=asgi_app(flow))``)."""
    return make_asgi_app(registry=registry(flow))
