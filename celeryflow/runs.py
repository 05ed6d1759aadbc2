"""Run states, their allowed transitions, and the read models returned by the Flow."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any

from pydantic import BaseModel

from .events import Event

__all__ = [
    "TERMINAL",
    "TRANSITIONS",
    "Run",
    "RunStatus",
    "StepKind",
    "StepRecord",
    "StepStatus",
    "sources_of",
]


class RunStatus(str, Enum):
    QUEUED = "queued"  # waiting for a worker (possibly not before wake_at: retry back-off)
    RUNNING = "running"  # an executor holds the lease
    SLEEPING = "sleeping"  # parked until wake_at
    WAITING = "waiting"  # parked until an event, a child run or a task result
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # flow control decided not to start it

    def __str__(self) -> str:
        return self.value


class StepStatus(str, Enum):
    """A step row's status; the str values are what the database and the wire hold."""

    COMPLETED = "completed"
    FAILED = "failed"
    RETRYING = "retrying"  # failed, will run again on the next attempt
    SLEEPING = "sleeping"  # parked until wake_at
    WAITING = "waiting"  # parked until an event, a child run, a task or its branches

    def __str__(self) -> str:
        return self.value


class StepKind(str, Enum):
    """What a step row records; the str values are what the database and the wire hold."""

    RUN = "run"
    SLEEP = "sleep"
    WAIT = "wait"
    SEND = "send"
    INVOKE = "invoke"
    TASK = "task"
    PARALLEL = "parallel"
    RACE = "race"

    def __str__(self) -> str:
        return self.value


S = RunStatus
# The store only ever moves a run along these edges; each SQL update names its sources.
TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    S.QUEUED: frozenset({S.RUNNING, S.CANCELLED, S.SKIPPED}),
    # running -> running is a lease take-over after the executor died
    S.RUNNING: frozenset(
        {S.RUNNING, S.QUEUED, S.SLEEPING, S.WAITING, S.COMPLETED, S.FAILED, S.CANCELLED}
    ),
    S.SLEEPING: frozenset({S.RUNNING, S.CANCELLED}),
    S.WAITING: frozenset({S.RUNNING, S.QUEUED, S.CANCELLED}),
    S.COMPLETED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
    S.SKIPPED: frozenset(),
}
TERMINAL = frozenset(s for s, targets in TRANSITIONS.items() if not targets)


def sources_of(target: RunStatus) -> list[str]:
    """The states a run may be in for a move to ``target``."""
    return sorted(s.value for s, targets in TRANSITIONS.items() if target in targets)


class StepRecord(BaseModel):
    id: str  # the memo key: the step id, with ":N" for its N-th repeat in one run
    name: str  # the id the user passed
    kind: str
    status: str
    output: Any = None
    error: dict[str, Any] | None = None
    attempts: int = 0
    position: int
    wake_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None


class Run(BaseModel):
    id: str
    function_id: str
    event_id: str | None
    status: RunStatus
    output: Any = None
    error: dict[str, Any] | None = None
    attempt: int = 0
    events: list[Event] = []  # as the function sees them (ctx.events; ctx.event is the first)
    parent_run_id: str | None = None
    branch: int | None = None  # a step.parallel branch: the index of its callable
    wake_at: datetime | None = None
    created_at: datetime
    started_at: datetime | None = None
    ended_at: datetime | None = None
    steps: list[StepRecord] = []
