"""``step.invoke(task=)``: a legacy Celery task as a durable step.

The task is sent to its usual queue with ``link`` and ``link_error`` callbacks
(celeryflow's own tasks) that resume the run with its return value or its failure,
so no result backend is needed and no worker waits. The message is sent just before
the step's waiting row commits (a crash between the two sends the task again on
replay: at-least-once, like every step); an outcome that arrives before the commit
is retried briefly by the callback.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..codec import to_jsonable
from ..durations import Duration, parse_duration, utcnow
from ..errors import ConfigError, NonRetriableError, SerializationError
from ..outcomes import recorded_outcome
from ..runs import RunStatus, StepKind, StepStatus

if TYPE_CHECKING:
    from ..engine import Execution

__all__ = ["invoke_task"]

_TASK_IDS = uuid.UUID("6f1d4a2e-8c1b-4f5e-9a7d-2b3c4d5e6f70")


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
    plan, row = execution.begin(name, StepKind.TASK)
    key = plan.key
    if row is not None:
        late = f"task {task_name!r} did not finish in time"
        return recorded_outcome(execution, name, key, row, late)
    wake = None if limit is None else utcnow() + limit
    task_id = str(uuid.uuid5(_TASK_IDS, f"{execution.run_id}:{key}"))
    execution.doorbell.send_task(
        task, payload["args"], payload["kwargs"], task_id=task_id, run_id=execution.run_id, key=key
    )
    output = json.dumps({"task": task_name, "task_id": task_id})
    waiting = execution.step_row(plan, StepStatus.WAITING, wake_at=wake, output=output, ended=False)
    execution.park(RunStatus.WAITING, wake, (waiting, True), due_at_wake=True)
