"""``step.sleep`` and ``step.sleep_until``: the run parks sleeping until a time."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from ..durations import utcnow
from ..runs import RunStatus, StepKind, StepStatus

if TYPE_CHECKING:
    from ..engine import Execution

__all__ = ["sleep_until"]


def sleep_until(execution: Execution, name: str, when: Callable[[], datetime]) -> None:
    plan, row = execution.begin(name, StepKind.SLEEP, settle=False)
    now = utcnow()
    if row is not None:
        if row["status"] == StepStatus.COMPLETED:
            return
        wake = row["wake_at"]
        plan.new = False
        plan.started_at = row["started_at"]
    else:
        wake = when()
    if wake <= now or execution.engine.sleeps_elapse:
        execution.complete(plan, wake_at=wake)
        return
    values = execution.step_row(plan, StepStatus.SLEEPING, wake_at=wake, ended=False)
    execution.park(RunStatus.SLEEPING, wake, (values, plan.new))
