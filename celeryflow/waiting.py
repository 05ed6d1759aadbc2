"""Steps that wait for or make events and runs: ``step.wait_for_event``,
``step.send_event`` and ``step.invoke``.

They live beside the engine's ``Execution`` (whose memo, pending write and session
they use) so that engine.py stays about replay, ``step.run`` and sleeps.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from .codec import from_json
from .durations import Duration, parse_duration, utcnow
from .errors import ConfigError, EventError, Interrupt, NonRetriableError, StepError
from .events import INVOKED_EVENT, Event, condition_holds, prepare_events
from .expressions import ASYNC, compile_expression
from .functions import FlowFunction
from .outcomes import recorded_outcome
from .runs import RunStatus
from .store.waits import extract, find_recent_event, full_match_value, match_value

if TYPE_CHECKING:
    from .engine import Execution
    from .store import Recorded

__all__ = ["invoke", "send_event", "wait_for_event"]


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
    key, position = execution.next_key(name)
    plan = execution.new_plan(key, name, position, "wait")
    row = execution.recorded(key, name, "wait", position)
    if row is not None:
        if row["status"] == "completed":
            return _event_or_none(row["output"])
        # Claimed at the timeout: take the waiter, unless an event took it first.
        plan.new = False
        plan.started_at = row["started_at"]
        timed_out = execution.step_values(
            plan, status="completed", output="null", wake_at=row["wake_at"]
        )
        holds, won = execution.session.resolve_timeout(
            execution.fence, execution.take_pending(), (timed_out, False)
        )
        if not holds:
            raise execution.lost()
        return _event_or_none(won)

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
    waiting = execution.step_values(plan, status="waiting", wake_at=expires, ended_at=None)
    waiter = {
        "run_id": execution.run_id,
        "key": key,
        "kind": "event",
        "event_name": event,
        "match_field": match,
        "match_value": match_value(run_event, match) if match else None,
        "condition": if_,
        "expires_at": expires,
        "created_at": now,
    }
    search = None
    if window is not None:
        since = now - window

        def search(conn: Any) -> dict[str, Any] | None:
            return find_recent_event(conn, event, since, accepts)

    holds, found = execution.session.wait(
        execution.run_id,
        execution.fence,
        wake_at=expires,
        attempt=execution.run_attempt,
        writes=execution.take_pending(),
        waiting=(waiting, True),
        waiter=waiter,
        lookback=search,
    )
    if not holds:
        raise execution.lost()
    if found is not None:
        return Event.model_validate(found)
    raise Interrupt(RunStatus.WAITING.value, expires)


def _event_or_none(output: str | None) -> Event | None:
    value = from_json(output)
    return None if value is None else Event.model_validate(value)


def send_event(
    execution: Execution, name: str, events: Event | dict[str, Any] | list[Event | dict[str, Any]]
) -> list[str]:
    """Send events once for this run: they are recorded with the step in one
    transaction, and events without an id get one derived from the run and step,
    so neither a replay nor a retry sends twice. Returns the event ids."""
    key, position = execution.next_key(name)
    plan = execution.new_plan(key, name, position, "send")
    row = execution.recorded(key, name, "send", position)
    if row is not None and row["status"] == "completed":
        return list(json.loads(row["output"]))
    items = events if isinstance(events, list) else [events]
    with_ids: list[Event | dict[str, Any]] = []
    for index, item in enumerate(items):
        data = item.model_dump() if isinstance(item, Event) else dict(item)
        if not data.get("id"):
            seed = f"{execution.run_id}:{key}:{index}".encode()
            data["id"] = hashlib.sha256(seed).hexdigest()[:32]
        with_ids.append(data)
    try:
        prepared = prepare_events(with_ids)
    except EventError as exc:
        raise NonRetriableError(f"step.send_event({name!r}): {exc}") from None
    ids = [str(ev.id) for ev in prepared]
    done = execution.step_values(plan, status="completed", output=json.dumps(ids))
    rows: list[dict[str, Any]] = []

    def record(conn: Any) -> Recorded:
        rows.clear()  # a lost connection retries the transaction, and this with it
        return execution.planner.record_events_on(conn, prepared, utcnow(), rows)

    recorded = execution.session.record_events(
        execution.fence, [*execution.take_pending(), (done, plan.new)], record
    )
    if recorded is None:
        raise execution.lost()
    execution.doorbell.ring([*recorded.created, *recorded.resumed])
    if recorded.cancelled:
        # runs whose cancel_on these events matched: what they started goes too, as
        # after Flow.send (flow.cancel's default), once their cancel has committed
        execution.store.cancel_descendants(recorded.cancelled, utcnow())
    execution.hooks.announce(prepared, rows, recorded.created)
    return ids


def invoke(
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
    key, position = execution.next_key(name)
    plan = execution.new_plan(key, name, position, "invoke")
    row = execution.recorded(key, name, "invoke", position)
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
        raise StepError(name, json.loads(child["error"]))
    child.update(parent_run_id=execution.run_id, parent_step=key)
    waiting = execution.step_values(plan, status="waiting", wake_at=wake, ended_at=None)
    if not execution.session.invoke(
        execution.run_id,
        execution.fence,
        wake_at=wake,
        attempt=execution.run_attempt,
        writes=[*execution.take_pending(), (waiting, True)],
        children=[child],
    ):
        raise execution.lost()
    execution.doorbell.ring([child["id"]], function_id=child["function_id"])
    execution.hooks.announce([], [child], [str(child["id"])])
    raise Interrupt(RunStatus.WAITING.value, wake)
