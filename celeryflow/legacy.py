"""Gradual migration from Celery: a legacy task as a durable step, a legacy task
triggered by events, and old call sites (``fn.delay`` / ``fn.apply_async``) that
start runs.

A legacy task invoked as a step is sent to its usual queue with ``link`` and
``link_error`` callbacks (celeryflow's own tasks) that resume the run with its
return value or its failure, so no result backend is needed and no worker waits.
The message is sent just before the step's waiting row commits (a crash between the
two sends the task again on replay: at-least-once, like every step); an outcome
that arrives before the commit is retried briefly by the callback.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from .codec import to_jsonable
from .durations import Duration, parse_datetime, parse_duration, utcnow
from .errors import (
    CeleryflowError,
    ConfigError,
    Interrupt,
    NonRetriableError,
    SerializationError,
)
from .outcomes import recorded_outcome
from .runs import TERMINAL, Run, RunStatus, StepKind, StepStatus

if TYPE_CHECKING:
    from .engine import Execution
    from .flow import Flow

__all__ = ["RunFailedError", "RunHandle", "call_arguments", "invoke_task", "subscriber"]

_TASK_IDS = uuid.UUID("6f1d4a2e-8c1b-4f5e-9a7d-2b3c4d5e6f70")
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


def invoke_task(
    execution: Execution,
    name: str,
    *,
    task: Any,
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    timeout: Duration | None = None,
) -> Any:
    """``ctx.step.invoke(id, task=legacy_task, ...)``: send the task, park the run,
    return the task's return value; its failure (after its own retries) or the
    timeout raises StepError."""
    where = f"step.invoke({name!r})"
    task_name = getattr(task, "name", None)
    if not isinstance(task_name, str) or not callable(getattr(task, "apply_async", None)):
        raise NonRetriableError(f"{where}: task= must be a Celery task, got {task!r}")
    try:
        limit = None if timeout is None else parse_duration(timeout, f"{where} timeout")
        payload = to_jsonable({"args": list(args), "kwargs": kwargs or {}}, where)
    except (ConfigError, SerializationError) as exc:
        raise NonRetriableError(str(exc)) from None
    key, position = execution.next_key(name)
    plan = execution.new_plan(key, name, position, StepKind.TASK)
    row = execution.recorded(key, name, StepKind.TASK, position)
    if row is not None:
        late = f"task {task_name!r} did not finish in time"
        return recorded_outcome(execution, name, key, row, late)
    wake = None if limit is None else utcnow() + limit
    task_id = str(uuid.uuid5(_TASK_IDS, f"{execution.run_id}:{key}"))
    execution.doorbell.send_task(
        task, payload["args"], payload["kwargs"], task_id=task_id, run_id=execution.run_id, key=key
    )
    output = json.dumps({"task": task_name, "task_id": task_id})
    waiting = execution.step_values(
        plan, status=StepStatus.WAITING, wake_at=wake, output=output, ended_at=None
    )
    if not execution.session.move(
        execution.run_id,
        execution.fence,
        status=RunStatus.WAITING,
        wake_at=wake,
        due_at=wake,
        attempt=execution.run_attempt,
        writes=[*execution.take_pending(), (waiting, True)],
    ):
        raise execution.lost()
    raise Interrupt(RunStatus.WAITING.value, wake)


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
