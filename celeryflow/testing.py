"""Helpers for users' own tests: a real in-process worker, polling with a deadline,
and running what is due under Celery's eager mode.

from celeryflow.testing import worker, wait_for_run

with worker(flow):
    [event_id] = flow.send(Event(name="user/signed_up", data={...}))
    run = wait_for_run(flow, event_id=event_id)
    assert run.status == "completed"

Eager mode (``task_always_eager``, Django's ``CELERY_TASK_ALWAYS_EAGER``): ``send`` runs
each new run inline up to its first park (a sleep, a wait, a retry back-off, a
concurrency slot) and returns; a park is never run inline (that would recurse). Its
wake time stays in the store, and :func:`run_due` executes the runs whose time has
come. :func:`wait_for_run` calls it while it polls, so in eager mode a test may just
``send`` and ``wait_for_run``; :func:`sleeps_elapse` makes sleeps end at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from .durations import utcnow
from .errors import CeleryflowError
from .flow import Flow
from .runs import TERMINAL, Run, RunStatus
from .tasks import eager_off, is_eager, start_test_worker

__all__ = ["run_due", "sleeps_elapse", "wait_for", "wait_for_run", "worker"]

T = TypeVar("T")


@contextmanager
def worker(
    flow: Flow, *, pool: str = "threads", concurrency: int = 2, **options: Any
) -> Iterator[Any]:
    """Run a real Celery worker for ``flow``'s app in a thread while the block runs.

    Eager mode is off meanwhile (``app.conf.task_always_eager`` and the namespaced
    setting the app was configured from, e.g. Django's ``CELERY_TASK_ALWAYS_EAGER``),
    so messages reach the worker; both are restored after."""
    with (
        eager_off(flow.app),
        start_test_worker(flow.app, pool=pool, concurrency=concurrency, **options) as w,
    ):
        yield w


def run_due(flow: Flow, *, max_runs: int = 1000) -> list[str]:
    """Execute here, inline, every run whose wake time has come (a retry back-off,
    a sleep, a wait's timeout), again until none is due now; returns their ids.

    For eager mode, where nothing else executes a parked run; it never waits for
    a wake time in the future (poll with :func:`wait_for_run` for that)."""
    executed: list[str] = []
    while due := flow.store.woken(utcnow()):
        if len(executed) + len(due) > max_runs:
            raise CeleryflowError(
                f"run_due executed {len(executed)} runs and {len(due)} more are due: "
                "a function retrying without delay? (raise max_runs if this is right)"
            )
        flow.doorbell.run_inline(due)
        executed += due
    return executed


@contextmanager
def sleeps_elapse(flow: Flow) -> Iterator[None]:
    """``step.sleep`` and ``step.sleep_until`` end at once while the block runs (in
    this process): the sleep step is recorded completed with its wake time, and the
    run goes on. For eager tests of functions that sleep for days."""
    before = flow.engine.sleeps_elapse
    flow.engine.sleeps_elapse = True
    try:
        yield
    finally:
        flow.engine.sleeps_elapse = before


def wait_for(
    probe: Callable[[], T | None],
    *,
    timeout: float = 30.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Call ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"timed out after {timeout:.1f}s waiting for {what} (last: {last!r})"
            )
        time.sleep(interval)


def wait_for_run(
    flow: Flow,
    run_id: str | None = None,
    *,
    event_id: str | None = None,
    status: RunStatus | str | set[RunStatus] | None = None,
    timeout: float = 30.0,
) -> Run:
    """Wait until the run (or the first run of ``event_id``) reaches ``status``
    (default: any terminal state) and return it with its steps. In eager mode it
    executes the runs that come due meanwhile (:func:`run_due`)."""
    if status is None:
        wanted = {s.value for s in TERMINAL}
    elif isinstance(status, set):
        wanted = {RunStatus(s).value for s in status}
    else:
        wanted = {RunStatus(status).value}

    eager = is_eager(flow.app)

    def probe() -> Run | None:
        if eager:  # nothing else executes a parked run
            run_due(flow)
        rid = run_id
        if rid is None:
            found = flow.list_runs(event_id=event_id, limit=1)
            if not found:
                return None
            rid = found[0].id
        run = flow.get_run(rid)
        return run if run.status.value in wanted else None

    return wait_for(probe, timeout=timeout, what=f"run {run_id or event_id} to be {sorted(wanted)}")
