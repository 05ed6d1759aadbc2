"""Helpers for users' own tests: a real in-process worker, and polling with a deadline.

from celeryflow.testing import worker, wait_for_run

with worker(flow):
    [event_id] = flow.send(Event(name="user/signed_up", data={...}))
    run = wait_for_run(flow, event_id=event_id)
    assert run.status == "completed"
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from .flow import Flow
from .runs import TERMINAL, Run, RunStatus
from .tasks import start_test_worker

__all__ = ["wait_for", "wait_for_run", "worker"]

T = TypeVar("T")


@contextmanager
def worker(
    flow: Flow, *, pool: str = "threads", concurrency: int = 2, **options: Any
) -> Iterator[Any]:
    """Run a real Celery worker for ``flow``'s app in a thread while the block runs."""
    with start_test_worker(flow.app, pool=pool, concurrency=concurrency, **options) as w:
        yield w


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
    (default: any terminal state) and return it with its steps."""
    if status is None:
        wanted = {s.value for s in TERMINAL}
    elif isinstance(status, set):
        wanted = {RunStatus(s).value for s in status}
    else:
        wanted = {RunStatus(status).value}

    def probe() -> Run | None:
        rid = run_id
        if rid is None:
            found = flow.list_runs(event_id=event_id, limit=1)
            if not found:
                return None
            rid = found[0].id
        run = flow.get_run(rid)
        return run if run.status.value in wanted else None

    return wait_for(probe, timeout=timeout, what=f"run {run_id or event_id} to be {sorted(wanted)}")
