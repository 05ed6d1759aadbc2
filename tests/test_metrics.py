"""Prometheus metrics (celeryflow/metrics.py) scraped from a real prefork worker
(``-c 2``) in prometheus_client's multiprocess mode: the counters and histograms of
the runs' functions add up across the pool's processes, and the store's gauges are
read at scrape time."""

from __future__ import annotations

import importlib
import os
import socket
import sys
import urllib.request
from pathlib import Path

import pytest
from flowkit import APPS, apps_env, worker_process
from prometheus_client.parser import text_string_to_metric_families
from services import Stack

from celeryflow import Event, Flow, RunStatus
from celeryflow.testing import wait_for, wait_for_run

RUNS = 6
FINISHED = "celeryflow_runs_finished_total"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The endpoint's samples: (name, sorted labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.mark.parametrize("stack", ["redis-postgres"], indirect=True)
def test_a_prefork_worker_exposes_the_runs_metrics(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    multiproc = tmp_path / "prom"
    multiproc.mkdir()
    markers = tmp_path / "markers"
    markers.mkdir()
    port = free_port()
    env = {
        "CF_BROKER": stack.broker_url,
        "CF_QUEUE": stack.queue,
        "CF_STORE": stack.store_url,
        "CF_MARKERS": str(markers),
        "CF_METRICS_PORT": str(port),
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
    }
    for key, val in env.items():
        monkeypatch.setenv(key, val)
    monkeypatch.syspath_prepend(str(APPS))
    sys.modules.pop("metrics_app", None)
    flow: Flow = importlib.import_module("metrics_app").flow
    flow.list_runs()  # migrated before the worker starts
    command = [sys.executable, "-m", "celery", "-A", "metrics_app", "worker"]
    command += ["--pool", "prefork", "-c", "2", "--loglevel", "INFO"]
    command += ["--without-mingle", "--without-gossip", "-n", "metrics@%h"]
    log = tmp_path / "worker.log"
    try:
        with worker_process(command, apps_env(**env), tmp_path, log, tail=6000):
            wait_for(lambda: " ready." in log.read_text(), timeout=60, what="worker ready")
            sent = flow.send(
                [Event(name="metrics/metered", data={"tag": f"m{i}"}) for i in range(RUNS)]
            )
            [doomed] = flow.send(Event(name="metrics/doomed"))
            [napper] = flow.send(Event(name="metrics/napper"))
            for event_id in sent:
                assert (
                    wait_for_run(flow, event_id=event_id, timeout=60).status == RunStatus.COMPLETED
                )
            assert wait_for_run(flow, event_id=doomed, timeout=60).status == RunStatus.FAILED
            wait_for_run(flow, event_id=napper, status=RunStatus.SLEEPING, timeout=60)

            def settled() -> dict | None:  # type: ignore[type-arg]
                # the last run's hooks run just after its end is written
                samples = scrape(port)
                done = value(
                    samples,
                    "celeryflow_runs_finished_total",
                    function="metered",
                    status="completed",
                )
                passes = value(samples, "celeryflow_reconciler_passes_total")
                return samples if done == RUNS and passes >= 1 else None

            samples = wait_for(settled, timeout=30, what="the counters of every run")
    finally:
        sys.modules.pop("metrics_app", None)

    metered = {"function": "metered"}
    assert value(samples, "celeryflow_runs_started_total", **metered) == RUNS
    assert value(samples, "celeryflow_runs_started_total", function="doomed") == 1
    assert value(samples, FINISHED, function="doomed", status="failed") == 1
    # each run's flaky step failed once and was retried: a retry park, then the end
    assert value(samples, "celeryflow_step_retries_total", **metered) == RUNS
    assert value(samples, "celeryflow_run_retries_total", **metered) == 0
    assert (
        value(samples, "celeryflow_runs_parked_total", function="metered", reason="retry") == RUNS
    )
    # two steps completed per run, and one failed attempt each
    steps = "celeryflow_step_duration_seconds_count"
    assert value(samples, steps, function="metered", status="completed") == 2 * RUNS
    assert value(samples, steps, function="metered", status="retried") == RUNS
    assert (
        value(
            samples, "celeryflow_step_duration_seconds_sum", function="metered", status="completed"
        )
        > 0
    )
    assert value(samples, "celeryflow_queue_lag_seconds_count", **metered) == RUNS
    assert value(samples, "celeryflow_queue_lag_seconds_sum", **metered) > 0
    assert value(samples, "celeryflow_execution_duration_seconds_count", **metered) == 2 * RUNS
    # the gauges come from the store at scrape time
    assert value(samples, "celeryflow_runs", function="napper", status="sleeping") == 1
    assert value(samples, "celeryflow_runs", function="metered", status="queued") == 0
    assert value(samples, "celeryflow_store_up") == 1
    # the values were written by more than one process (the pool's children and the
    # main process's reconciler), and added up by the scrape
    pids = {name.rsplit("_", 1)[-1] for name in os.listdir(multiproc) if name.endswith(".db")}
    assert len(pids) >= 2, sorted(os.listdir(multiproc))


@pytest.mark.parametrize("stack", ["redis-postgres"], indirect=True)
def test_every_end_is_counted_once_where_the_metrics_are_scraped(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs cancelled while parked (by flow.cancel in this process, by a Timeouts
    expiry), cancelled while running, and runs skipped by flow control in a worker
    (step.send_event to an idempotent function) are each counted once, by the worker:
    the cancelling process tells no hook (hooks.py, "Every run ends in run_finished
    exactly once")."""
    multiproc = tmp_path / "prom"
    multiproc.mkdir()
    markers = tmp_path / "markers"
    markers.mkdir()
    port = free_port()
    env = {
        "CF_BROKER": stack.broker_url,
        "CF_QUEUE": stack.queue,
        "CF_STORE": stack.store_url,
        "CF_MARKERS": str(markers),
        "CF_METRICS_PORT": str(port),
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
    }
    for key, val in env.items():
        monkeypatch.setenv(key, val)
    monkeypatch.syspath_prepend(str(APPS))
    sys.modules.pop("metrics_app", None)
    flow: Flow = importlib.import_module("metrics_app").flow
    flow.list_runs()
    command = [sys.executable, "-m", "celery", "-A", "metrics_app", "worker"]
    command += ["--pool", "prefork", "-c", "2", "--loglevel", "INFO"]
    command += ["--without-mingle", "--without-gossip", "-n", "ends@%h"]
    log = tmp_path / "worker.log"

    def counted(function: str, status: str) -> float:
        return value(scrape(port), FINISHED, function=function, status=status)

    try:
        with worker_process(command, apps_env(**env), tmp_path, log, tail=6000):
            wait_for(lambda: " ready." in log.read_text(), timeout=60, what="worker ready")
            [dozing] = flow.send(Event(name="metrics/dozer"))
            [bounded] = flow.send(Event(name="metrics/bounded"))
            flow.send(Event(name="metrics/busy"))
            [fanned] = flow.send(Event(name="metrics/fanout"))
            dozer = wait_for_run(flow, event_id=dozing, status=RunStatus.SLEEPING, timeout=60)
            assert flow.cancel(dozer.id)
            wait_for(lambda: (markers / "busy.started").exists(), timeout=60, what="busy runs")
            busy_run = flow.list_runs(function_id="busy")[0]
            assert flow.cancel(busy_run.id)
            (markers / "busy").touch()  # its next write finds the run cancelled
            assert wait_for_run(flow, event_id=bounded, timeout=60).status == RunStatus.CANCELLED
            assert wait_for_run(flow, event_id=fanned, timeout=60).status == RunStatus.COMPLETED
            wait_for(
                lambda: (
                    counted("dozer", "cancelled") == 1
                    and counted("bounded", "cancelled") == 1
                    and counted("busy", "cancelled") == 1
                    and counted("once", "skipped") == 2
                ),
                timeout=30,
                what="every end counted",
            )
            # a few more reconciler passes (1 s apart) count nothing twice
            passes = value(scrape(port), "celeryflow_reconciler_passes_total")
            wait_for(
                lambda: value(scrape(port), "celeryflow_reconciler_passes_total") >= passes + 3,
                timeout=30,
                what="three more passes",
            )
            samples = scrape(port)
    finally:
        sys.modules.pop("metrics_app", None)
    assert value(samples, FINISHED, function="dozer", status="cancelled") == 1
    assert value(samples, FINISHED, function="bounded", status="cancelled") == 1
    assert value(samples, FINISHED, function="busy", status="cancelled") == 1
    assert value(samples, FINISHED, function="once", status="skipped") == 2
    assert value(samples, FINISHED, function="once", status="completed") == 1
    # a run cancelled while parked ran no execution to time
    execution = "celeryflow_execution_duration_seconds_count"
    assert value(samples, execution, function="dozer") == 1  # its one park, no end
