"""``step.wait_for_event``: park the run until a matching event or its timeout."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ..codec import from_json
from ..durations import Duration, parse_duration, utcnow
from ..errors import ConfigError, NonRetriableError
from ..events import Event, condition_holds
from ..expressions import ASYNC, compile_expression
from ..runs import StepKind, StepStatus
from ..store.rows import Lookback, WaitKind, waiter_row
from ..store.waits import extract, full_match_value, match_value

if TYPE_CHECKING:
    from ..engine import Execution

__all__ = ["wait_for_event"]


def _checked(
    name: str, timeout: Duration, lookback: Duration | None, if_: str | None
) -> tuple[timedelta, timedelta | None]:
    where = f"step.wait_for_event({name!r})"
    try:
        limit = parse_duration(timeout, f"{where} timeout")
        window = None if lookback is None else parse_duration(lookback, f"{where} lookback")
        if if_ is not None:
            compile_expression(if_, f"{where} if_", ASYNC)
    except ConfigError as exc:
        raise NonRetriableError(str(exc)) from None
    return limit, window


def wait_for_event(
    execution: Execution,
    name: str,
    *,
    event: str,
    timeout: Duration,
    match: str | None = None,
    if_: str | None = None,
    lookback: Duration | None = None,
) -> Event | None:
    """Park the run until an ``event`` arrives that matches, or ``timeout`` passes
    (then None). ``match="data.order_id"``: the incoming event's field equals the
    same field of this run's event. ``if_``: CEL over ``event`` (this run's) and
    ``async`` (the candidate). ``lookback``: also take the newest matching event
    received up to that long before the wait began (Inngest has no such option)."""
    limit, window = _checked(name, timeout, lookback, if_)
    plan, row = execution.begin(name, StepKind.WAIT)
    key = plan.key
    if row is not None:
        if row["status"] == StepStatus.COMPLETED:
            return _event_or_none(row["output"])
        # Claimed at the timeout: take the waiter, unless an event took it first.
        plan.new = False
        plan.started_at = row["started_at"]
        timed_out = execution.step_row(
            plan, StepStatus.COMPLETED, output="null", wake_at=row["wake_at"]
        )
        return _event_or_none(execution.time_out_wait((timed_out, False)))

    run_event = execution.ctx.event.model_dump()

    def accepts(candidate: dict[str, Any]) -> bool:
        if match and (
            extract(candidate, match) is None
            or full_match_value(candidate, match) != full_match_value(run_event, match)
        ):
            return False  # a field both lack does not pair them (see waits.extract)
        return if_ is None or condition_holds(if_, run_event, candidate)

    now = utcnow()
    expires = now + limit
    waiting = execution.step_row(plan, StepStatus.WAITING, wake_at=expires, ended=False)
    waiter = waiter_row(
        run_id=execution.run_id,
        key=key,
        kind=WaitKind.EVENT,
        event_name=event,
        match_field=match,
        match_value=match_value(run_event, match) if match else None,
        condition=if_,
        expires_at=expires,
        created_at=now,
    )
    search = None if window is None else Lookback(event, now - window, accepts)
    found = execution.park_on_event(expires, (waiting, True), waiter, search)
    return Event.model_validate(found)


def _event_or_none(output: str | None) -> Event | None:
    value = from_json(output)
    return None if value is None else Event.model_validate(value)
