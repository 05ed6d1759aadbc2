"""``step.run``: a piece of user code done once per run, its result recorded; a
failed attempt is retried (the run parks queued) until its retries are spent."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any, NoReturn

from ..codec import from_json, to_json
from ..durations import utcnow
from ..errors import NonRetriableError, SerializationError, StepError, error_info
from ..hooks import StepFinished, StepRetried, StepStarted
from ..runs import RunStatus, StepKind, StepStatus

if TYPE_CHECKING:
    from ..engine import Execution
    from .protocol import StepPlan

__all__ = ["begin", "complete", "fail"]


def begin(execution: Execution, name: str) -> StepPlan:
    plan, row = execution.begin(name, StepKind.RUN, settle=False)
    if row is not None:
        if row["status"] == StepStatus.COMPLETED:
            plan.done = True
            plan.value = from_json(row["output"])
            return plan
        if row["status"] == StepStatus.FAILED:
            raise StepError(name, from_json(row["error"]))
        plan.prior_attempts = int(row["attempts"])
        plan.new = False
    execution.settle()
    execution.ctx.attempt = plan.prior_attempts
    plan.started_at = utcnow()
    if execution.hooks:
        execution.hooks.emit("step_started", StepStarted(**_step_info(execution, plan)))
    return plan


def _step_info(execution: Execution, plan: StepPlan) -> dict[str, Any]:
    return dict(
        function_id=execution.function.id,
        run_id=execution.run_id,
        step_id=plan.name,
        key=plan.key,
        index=plan.position,
        attempt=plan.prior_attempts + 1,
    )


def _step_seconds(plan: StepPlan) -> float:
    return max(0.0, (utcnow() - plan.started_at).total_seconds())


def complete(execution: Execution, plan: StepPlan, result: Any, retries: int | None) -> Any:
    try:
        text = to_json(result, f"step {plan.name!r} result")
    except SerializationError as exc:
        fail(execution, plan, NonRetriableError(str(exc)), retries)
    execution.complete(plan, output=text)
    execution.ctx.attempt = execution.run_attempt  # the body's attempt again, after the step's
    if execution.hooks:
        done = StepFinished(**_step_info(execution, plan), duration=_step_seconds(plan))
        execution.hooks.emit("step_finished", done)
    return from_json(text)


def fail(
    execution: Execution,
    plan: StepPlan,
    exc: Exception,
    retries: int | None,
    retry_delay: timedelta | None = None,
) -> NoReturn:
    """Record a failed attempt; raises StepError (for good) or Interrupt (retry)."""
    attempts = plan.prior_attempts + 1
    limit = execution.function.config.retries if retries is None else retries
    error = error_info(exc)
    if isinstance(exc, NonRetriableError) or attempts > limit:
        values = execution.step_row(
            plan, StepStatus.FAILED, error=to_json(error, "error"), attempts=attempts
        )
        execution.record_now((values, plan.new))
        if execution.hooks:
            failed = StepFinished(
                **_step_info(execution, plan),
                status=StepStatus.FAILED,
                duration=_step_seconds(plan),
                error=str(error["type"]),
            )
            execution.hooks.emit("step_finished", failed)
        raise StepError(plan.name, error) from exc
    wake = utcnow() + execution.retry_delay(exc, attempts, retry_delay)
    execution.log.warning(
        "step %r attempt %d failed: %r; retry at %s", plan.name, attempts, exc, wake
    )
    values = execution.step_row(
        plan, StepStatus.RETRYING, error=to_json(error, "error"), attempts=attempts, ended=False
    )
    retried = StepRetried(
        **_step_info(execution, plan),
        error=str(error["type"]),
        wake_at=wake,
        duration=_step_seconds(plan),
    )
    execution.park(
        RunStatus.QUEUED,
        wake,
        (values, plan.new),
        then=lambda: execution.hooks.emit("step_retried", retried),
    )
