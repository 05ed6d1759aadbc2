"""The rows the planner, the engine and its step kinds hand to the store, typed: a
run row (:class:`RunRow`), a step row (:class:`StepRow`, written as a
:data:`StepWrite`) and a waiter row (:class:`WaiterRow`: a ``wait_for_event`` or a
``cancel_on``). They are built here, by :func:`run_row`, :func:`step_row` and
:func:`waiter_row`, so every column an insert names is present (rows batch in one
executemany) and enum values reach SQL as their strings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import TYPE_CHECKING, Any, TypedDict

from ..events import Event
from ..runs import RunStatus, StepKind, StepStatus

if TYPE_CHECKING:
    from sqlalchemy import RowMapping

    from .store import PlannedRun, Recorded

__all__ = [
    "Claim",
    "Lookback",
    "RunRow",
    "Sending",
    "StepRow",
    "StepWrite",
    "WaitKind",
    "WaiterRow",
    "run_row",
    "step_row",
    "waiter_row",
]


@dataclass
class Claim:
    """A run this executor now holds, with every recorded step (and, for a
    step.parallel branch, the parent's steps, which the branch replays)."""

    run: RowMapping
    fence: int
    steps: dict[str, RowMapping]
    parent_steps: dict[str, RowMapping] = field(default_factory=dict)

    @property
    def first(self) -> bool:
        """The run :func:`never_started` before this claim. The claim that sets
        ``started_at`` bumps the fence from 0 to 1 (a slot's undone claim hands both
        back; a cancel ends the run), so the first claim is the one holding fence 1."""
        return self.fence == 1


class RunRow(TypedDict):
    """A new ``cf_runs`` row as the planner makes it (the lease, output and
    started_at columns are the claim's and the finish's to fill)."""

    id: str
    function_id: str
    event_id: str | None  # None: a step.parallel branch
    events: str  # the triggering events, as JSON
    status: str  # a RunStatus value: queued, or skipped when flow control refused it
    error: str | None  # a skipped run's reason, as JSON
    attempt: int
    fence: int
    dispatches: int
    wake_at: datetime | None
    due_at: datetime | None
    parent_run_id: str | None
    parent_step: str | None
    branch: int | None
    context: str | None
    start_deadline: datetime | None
    finish_deadline: datetime | None
    concurrency_key1: str | None
    concurrency_key2: str | None
    queue_at: datetime
    created_at: datetime
    ended_at: datetime | None


class StepRow(TypedDict):
    """A ``cf_steps`` row as the engine writes it."""

    run_id: str
    key: str
    name: str
    position: int
    kind: str  # a StepKind value
    status: str  # a StepStatus value
    output: str | None
    error: str | None
    attempts: int
    wake_at: datetime | None
    started_at: datetime
    ended_at: datetime | None


# A step row to write, and whether it is new (INSERT) or recorded already (UPDATE).
StepWrite = tuple[StepRow, bool]


class WaitKind(str, Enum):
    """What a ``cf_waits`` row waits for; the str values are what the database holds."""

    EVENT = "event"  # a wait_for_event step: the event resumes the run
    CANCEL = "cancel"  # a cancel_on: the event cancels the run

    def __str__(self) -> str:
        return self.value


class WaiterRow(TypedDict):
    """A ``cf_waits`` row: a run waiting for an event (``kind`` "event") or to be
    cancelled by one (``kind`` "cancel")."""

    run_id: str | None  # a cancel_on waiter's is filled in once its run has an id
    key: str
    kind: str  # a WaitKind value
    event_name: str
    match_field: str | None
    match_value: str | None
    condition: str | None
    expires_at: datetime | None
    created_at: datetime


@dataclass(frozen=True)
class Lookback:
    """A wait's ``lookback``: the newest ``event_name`` event received since ``since``
    that ``accepts`` (the wait's match and condition) takes, searched by the store in
    the wait's own transaction."""

    event_name: str
    since: datetime
    accepts: Callable[[dict[str, Any]], bool]


@dataclass
class Sending:
    """Events a run sends (``step.send_event``, ``celeryflow/function.failed``), handed
    to the store with the write that sends them: it records them in that write's
    transaction and, for each it records as new, the runs ``plan`` returns for it.
    ``plan`` is the planner's (no transaction handle: the store holds that). Once the
    write commits, ``recorded`` says what recording them did."""

    events: list[Event]
    plan: Callable[[Event], list[PlannedRun]]
    now: datetime
    resume_due: datetime
    recorded: Recorded | None = None


def run_row(
    *,
    id: str,
    function_id: str,
    event_id: str | None,
    events: str,
    due_at: datetime | None,
    context: str | None,
    concurrency_keys: list[str | None],
    queue_at: datetime,
    created_at: datetime,
) -> RunRow:
    """A queued run: nothing dispatched, no parent, no deadlines (the planner sets
    those it has on the row)."""
    key1, key2 = concurrency_keys
    return RunRow(
        id=id,
        function_id=function_id,
        event_id=event_id,
        events=events,
        status=RunStatus.QUEUED.value,
        error=None,
        attempt=0,
        fence=0,
        dispatches=0,
        wake_at=None,
        due_at=due_at,
        parent_run_id=None,
        parent_step=None,
        branch=None,
        context=context,
        start_deadline=None,
        finish_deadline=None,
        concurrency_key1=key1,
        concurrency_key2=key2,
        queue_at=queue_at,
        created_at=created_at,
        ended_at=None,
    )


def step_row(
    *,
    run_id: str,
    key: str,
    name: str,
    position: int,
    kind: StepKind,
    status: StepStatus,
    attempts: int,
    started_at: datetime,
    ended_at: datetime | None,
    output: str | None = None,
    error: str | None = None,
    wake_at: datetime | None = None,
) -> StepRow:
    return StepRow(
        run_id=run_id,
        key=key,
        name=name,
        position=position,
        kind=kind.value,
        status=status.value,
        output=output,
        error=error,
        attempts=attempts,
        wake_at=wake_at,
        started_at=started_at,
        ended_at=ended_at,
    )


def waiter_row(
    *,
    run_id: str | None,
    key: str,
    kind: WaitKind,
    event_name: str,
    match_field: str | None,
    match_value: str | None,
    condition: str | None,
    expires_at: datetime | None,
    created_at: datetime,
) -> WaiterRow:
    return WaiterRow(
        run_id=run_id,
        key=key,
        kind=kind.value,
        event_name=event_name,
        match_field=match_field,
        match_value=match_value,
        condition=condition,
        expires_at=expires_at,
        created_at=created_at,
    )
