"""``step.invoke(function=)``: a child run of another flow function; the run parks
until it ends."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from ..durations import Duration, parse_duration, utcnow
from ..errors import ConfigError, NonRetriableError, StepError
from ..events import INVOKED_EVENT, Event
from ..functions import FlowFunction
from ..outcomes import recorded_outcome
from ..runs import RunStatus, StepKind, StepStatus

if TYPE_CHECKING:
    from ..engine import Execution

__all__ = ["invoke_function"]


def invoke_function(
    execution: Execution,
    name: str,
    *,
    function: FlowFunction | str,
    data: dict[str, Any] | None = None,
    timeout: Duration | None = None,
) -> Any:
    """Start a run of ``function`` with ``data`` as its event's data, park this run
    until it ends, and return its output; a failure (or ``timeout``) raises StepError.
    The child's run records this run as its parent."""
    target = function.id if isinstance(function, FlowFunction) else str(function)
    where = f"step.invoke({name!r})"
    if target not in execution.registry:
        raise NonRetriableError(f"{where}: no function {target!r} is registered")
    try:
        limit = None if timeout is None else parse_duration(timeout, f"{where} timeout")
    except ConfigError as exc:
        raise NonRetriableError(str(exc)) from None
    plan, row = execution.begin(name, StepKind.INVOKE)
    key = plan.key
    if row is not None:
        return recorded_outcome(execution, name, key, row, f"{target!r} did not finish in time")
    now = utcnow()
    wake = None if limit is None else now + limit
    seed = f"{execution.run_id}:{key}".encode()
    child_event = Event(
        name=INVOKED_EVENT,
        id=hashlib.sha256(seed).hexdigest()[:32],
        data=data or {},
        ts=int(now.timestamp() * 1000),
    )
    child = execution.planner.new_run(target, [child_event], now)
    if child["status"] == RunStatus.SKIPPED.value:  # its concurrency key failed on `data`
        raise StepError(name, json.loads(child["error"] or "{}"))
    child.update({"parent_run_id": execution.run_id, "parent_step": key})
    waiting = execution.step_row(plan, StepStatus.WAITING, wake_at=wake, ended=False)
    execution.park_on_runs(wake, (waiting, True), [child])
