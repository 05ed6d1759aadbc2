"""The app the fault suite's workers run: a 5-step function whose step bodies append
to a ledger file, so the suite can count how often each (run, step) body ran.

Built from environment variables by a worker (``celery -A five_app worker``), or by
:func:`build` in the test process: ``CF_FAULTS_BROKER``, ``CF_FAULTS_STORE``,
``CF_FAULTS_QUEUE``, ``CF_FAULTS_LEDGER`` (a file opened with O_APPEND: one line per
body start, ``<run_id> <step> <unix time> <pid>``), ``CF_FAULTS_STEP_SECONDS`` (how
long a body works), ``CF_FAULTS_LEASE``, ``CF_FAULTS_RECONCILE`` and ``CF_FAULTS_STATEMENT_TIMEOUT``
(also the connect timeout; Flow's defaults when unset).
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery

from celeryflow import Flow, event

__all__ = ["EVENT", "FUNCTION", "STEPS", "build"]

EVENT = "faults/go"
FUNCTION = "five"
STEPS = ["s0", "s1", "s2", "s3", "s4"]

_ledger_fd: dict[str, int] = {}


def _append(ledger: str, line: str) -> None:
    # One write() of one short line on an O_APPEND descriptor: lines from concurrent
    # processes never interleave, and a line is in the file once write() returns.
    fd = _ledger_fd.get(ledger)
    if fd is None:
        fd = _ledger_fd[ledger] = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, line.encode())


def build(
    broker: str,
    store: str,
    queue: str,
    ledger: str,
    *,
    step_seconds: float = 0.05,
    lease: str = "5s",
    reconcile: str = "1s",
    timeout: str | None = None,
) -> tuple[Celery, Flow]:
    app = Celery(f"cf-faults-{queue}", broker=broker)
    app.conf.update(
        task_default_queue=queue,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        # One message per child at a time: a killed worker takes no queued messages
        # with it beyond the ones it executes (they are safe anyway: the store rings).
        worker_prefetch_multiplier=1,
    )
    timeouts = {"connect_timeout": timeout, "statement_timeout": timeout} if timeout else {}
    flow = Flow(
        app, store=store, auto_migrate=True, lease=lease, reconcile_interval=reconcile, **timeouts
    )

    def body(run_id: str, step: str) -> str:
        _append(ledger, f"{run_id} {step} {time.time():.6f} {os.getpid()}\n")
        time.sleep(step_seconds)
        return step

    # retries=0: a step body never fails here, so any failed run is the engine
    # counting an infrastructure error as the user's.
    @flow.function(id=FUNCTION, trigger=event(EVENT), retries=0)
    def five(ctx: Any) -> list[str]:
        done = []
        for i, step in enumerate(STEPS):
            nap = ctx.event.data.get("nap")
            if i == 2 and nap:
                ctx.step.sleep("nap", nap)
            done.append(ctx.step.run(step, body, ctx.run_id, step))
        return done

    return app, flow


if "CF_FAULTS_BROKER" in os.environ:
    app, flow = build(
        os.environ["CF_FAULTS_BROKER"],
        os.environ["CF_FAULTS_STORE"],
        os.environ["CF_FAULTS_QUEUE"],
        os.environ["CF_FAULTS_LEDGER"],
        step_seconds=float(os.environ.get("CF_FAULTS_STEP_SECONDS", "0.05")),
        lease=os.environ.get("CF_FAULTS_LEASE", "5s"),
        reconcile=os.environ.get("CF_FAULTS_RECONCILE", "1s"),
        timeout=os.environ.get("CF_FAULTS_STATEMENT_TIMEOUT") or None,
    )
