"""Gradual migration from Celery: a legacy task triggered by events, and old call
sites (``fn.delay`` / ``fn.apply_async``) that start runs. A legacy task invoked
as a step is the step kind in ``steps/task.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from .durations import parse_datetime, utcnow
from .errors import (
    CeleryflowError,
    NonRetriableError,
)
from .runs import TERMINAL, Run, RunStatus

if TYPE_CHECKING:
    from .flow import Flow

__all__ = ["RunFailedError", "RunHandle", "call_arguments", "subscriber"]

# apply_async options that only route or shape the Celery message: meaningless for a
# run (the store schedules it), accepted so old call sites keep working.
IGNORED_OPTIONS = frozenset(
    {
        "queue",
        "routing_key",
        "exchange",
        "priority",
        "serializer",
        "compression",
        "headers",
        "retry",
        "retry_policy",
        "time_limit",
        "soft_time_limit",
        "expires",
        "ignore_result",
    }
)


class RunFailedError(CeleryflowError):
    """``handle.get()`` of a run that failed, was cancelled or skipped."""

    def __init__(self, run: Run) -> None:
        error = run.error or {}
        detail = f": {error.get('type', '')}: {error.get('message', '')}" if error else ""
        super().__init__(f"run {run.id} of {run.function_id!r} ended {run.status.value}{detail}")
        self.run = run
        self.error = error


class RunHandle:
    """What ``fn.delay(...)`` returns: the run's ``id``, and ``get()`` its output."""

    def __init__(self, flow: Flow, run_id: str) -> None:
        self.flow = flow
        self.id = run_id

    def get(self, timeout: float | None = None, interval: float = 0.05) -> Any:
        """Wait for the run to end; its output, or RunFailedError; TimeoutError after
        ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            run = self.flow.get_run(self.id)
            if run.status in TERMINAL:
                if run.status == RunStatus.COMPLETED:
                    return run.output
                raise RunFailedError(run)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"run {self.id} did not end within {timeout} s")
            time.sleep(interval)
            interval = min(interval * 1.5, 0.5)

    def __repr__(self) -> str:
        return f"<RunHandle {self.id}>"


def call_arguments(
    function_id: str, params: Sequence[str] | None, args: Sequence[Any], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """The event data of a call: arguments by name (positional ones need ``params``)."""
    if args and not params:
        raise TypeError(
            f"{function_id}() got positional arguments but declares no params=[...]; "
            "pass keyword arguments or declare the parameter names"
        )
    names = list(params or [])
    if len(args) > len(names):
        raise TypeError(
            f"{function_id}() takes {len(names)} positional arguments ({names}) "
            f"but {len(args)} were given"
        )
    data = dict(zip(names, args, strict=False))
    for name in kwargs:
        if name in data:
            raise TypeError(f"{function_id}() got multiple values for argument {name!r}")
    data.update(kwargs)
    return data


def start_time(countdown: float | None, eta: datetime | str | None) -> datetime | None:
    if countdown is not None and eta is not None:
        raise TypeError("give countdown or eta, not both")
    if countdown is not None:
        return utcnow() + timedelta(seconds=float(countdown))
    return None if eta is None else parse_datetime(eta, "eta")


def subscriber(task: Any, mapper: Callable[[Any], dict[str, Any]] | None) -> Callable[[Any], Any]:
    """The body of a function that calls ``task`` with its event's data as keyword
    arguments (or with what ``mapper(event)`` returns)."""

    def call_task(ctx: Any) -> Any:
        kwargs = dict(ctx.event.data) if mapper is None else mapper(ctx.event)
        if not isinstance(kwargs, dict):
            raise NonRetriableError(
                f"the kwargs mapper of {task.name!r} returned {type(kwargs).__name__}, not a dict"
            )
        return ctx.step.invoke("task", task=task, kwargs=kwargs)

    call_task.__name__ = f"call_{str(task.name).rsplit('.', 1)[-1]}"
    return call_task
