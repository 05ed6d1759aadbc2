"""``step.parallel``: the branches of one step run as runs of their own, on any worker.

The parent records the parallel step as waiting and, in the same transaction,
creates one child run per callable: the same function and event, with
``parent_step`` and ``branch`` set. A branch run replays the function against the
parent's memo (every step before the parallel step is recorded there, so nothing
before it is done again) and, on reaching the parallel step, calls only its own
callable; what that returns is the branch's output, and the run ends there. Steps
inside a branch are recorded on the branch's run. The branch that settles the step
(the last to finish, the first to fail, or in race mode the first to end)
completes it and queues the parent, in its own finishing transaction.

This is Inngest's model too (the function is re-entered for each branch), so the
same rule holds as for any step code: the callables must be built the same way on
every replay. A parallel step inside a branch is refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from enum import Enum
from typing import TYPE_CHECKING, Any

from ..codec import from_json
from ..durations import utcnow
from ..errors import NonRetriableError, StepError
from ..runs import RunStatus, StepKind, StepStatus

if TYPE_CHECKING:
    from ..engine import Execution

__all__ = ["MODES", "ParallelMode", "begin"]


class ParallelMode(str, Enum):
    """``step.parallel``'s ``mode``: every branch's result in order, or the first
    branch to end. A str, so the plain ``"all"`` / ``"race"`` callers pass compare
    equal."""

    ALL = "all"
    RACE = "race"

    def __str__(self) -> str:
        return self.value


MODES = tuple(m.value for m in ParallelMode)


def _checked(
    name: str, branches: Sequence[Callable[[], Any]], mode: str
) -> tuple[list[Any], ParallelMode]:
    where = f"step.parallel({name!r})"
    if mode not in MODES:
        raise NonRetriableError(f"{where}: mode must be 'all' or 'race', got {mode!r}")
    checked = ParallelMode(mode)
    if isinstance(branches, (str, bytes)) or not isinstance(branches, Sequence):
        raise NonRetriableError(f"{where}: branches must be a list of callables")
    calls = list(branches)
    for index, call in enumerate(calls):
        if not callable(call):
            raise NonRetriableError(f"{where}: branch {index} is not callable: {call!r}")
    if checked is ParallelMode.RACE and not calls:
        raise NonRetriableError(f"{where}: a race needs at least one branch")
    return calls, checked


def begin(
    execution: Execution, name: str, branches: Sequence[Callable[[], Any]], mode: str
) -> tuple[bool, Any]:
    """(True, result) once the step is settled: the results in order (``all``) or
    the first branch's (``race``). (False, callable) when this run is a branch of
    this very step and must call it. Otherwise parks the run on new branch runs."""
    calls, mode = _checked(name, branches, mode)
    key, position = execution.next_key(name)
    if execution.branch is not None:
        if execution.in_branch:
            raise NonRetriableError(
                f"step.parallel({name!r}) was called inside a parallel branch; "
                "branches cannot be nested"
            )
        if key == execution.branch_key:
            if execution.branch >= len(calls):
                # This branch's callable is gone (the code changed under the run). As
                # in Inngest, the function goes on still looking for it: the next
                # step it finds fails the branch, naming that step (and returning
                # without one fails it too, in the engine).
                return True, (None if mode is ParallelMode.RACE else [None] * len(calls))
            execution.in_branch = True
            return False, calls[execution.branch]
    kind = StepKind.PARALLEL if mode is ParallelMode.ALL else StepKind.RACE
    plan, row = execution.begin(name, kind, at=(key, position))
    if row is not None:
        if row["status"] == StepStatus.COMPLETED:
            return True, from_json(row["output"])
        if row["status"] == StepStatus.FAILED:
            raise StepError(name, json.loads(row["error"]))
        # still waiting on its branches (a stray wake): park again, start nothing
        execution.park(RunStatus.WAITING, None)
    if not calls:
        execution.complete(plan, output="[]")
        return True, []
    now = utcnow()
    children = []
    for index in range(len(calls)):
        child = execution.planner.new_run(execution.function.id, execution.ctx.events, now)
        child.update(
            {
                "parent_run_id": execution.run_id,
                "parent_step": key,
                "branch": index,
                "event_id": None,
            }
        )
        children.append(child)
    progress = json.dumps({"branches": len(calls), "results": {}})
    waiting = execution.step_row(plan, StepStatus.WAITING, output=progress, ended=False)
    execution.park_on_runs(None, (waiting, True), children)
