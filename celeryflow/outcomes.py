"""The outcome of a step parked on something else (a child run, a legacy task): how
a task's reported outcome is stored, and how a replay reads it back. Below both
``waiting`` (function invokes) and ``legacy`` (task invokes), which share it."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from .codec import from_json, to_json
from .errors import SerializationError, StepError
from .runs import StepStatus

if TYPE_CHECKING:
    from .engine import Execution

__all__ = ["recorded_outcome", "task_outcome"]


def task_outcome(outcome: dict[str, Any]) -> tuple[str | None, str | None]:
    """(output, error) JSON of a legacy task's outcome as the callbacks report it."""
    if "error" in outcome:
        return None, json.dumps(outcome["error"])
    try:
        return to_json(outcome.get("result"), "the task's return value"), None
    except SerializationError as exc:
        return None, json.dumps({"type": "SerializationError", "message": str(exc)})


def recorded_outcome(execution: Execution, name: str, key: str, row: Any, late: str) -> Any:
    """The outcome of a recorded step that waits on something else (a child run, a
    legacy task): its output, or StepError. Claimed while still waiting means its
    timeout passed: fail the step, unless the outcome came first."""
    if row["status"] == StepStatus.COMPLETED:
        return from_json(row["output"])
    if row["status"] == StepStatus.FAILED:
        raise StepError(name, json.loads(row["error"]))
    error = {"type": "TimeoutError", "message": late}
    won = execution.time_out_outcome(key, json.dumps(error))
    if won is None:
        raise StepError(name, error)
    step = next(s for s in execution.store.get_run(execution.run_id).steps if s.id == key)
    if step.status == StepStatus.FAILED:
        raise StepError(name, step.error or {})
    return step.output
