"""Events: the pydantic model, validation at send time, and event triggers."""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .codec import to_jsonable
from .errors import EventError, ExpressionError, SerializationError, describe
from .expressions import ASYNC, Expression, compile_expression

__all__ = [
    "CONTROL_CHARACTERS",
    "FAILED_EVENT",
    "INVOKED_EVENT",
    "MAX_DEPTH",
    "MAX_EVENTS",
    "SCHEDULED_EVENT",
    "Event",
    "EventTrigger",
    "condition_holds",
    "event",
    "prepare_events",
]

# The names of the events celeryflow itself sends, in one place: the engine, the
# planner, cron and the compat layers all read them here.
FAILED_EVENT = "celeryflow/function.failed"  # a run failed for good (and on_failure)
INVOKED_EVENT = "celeryflow/function.invoked"  # a run started by step.invoke / flow.start
SCHEDULED_EVENT = "celeryflow/scheduled.timer"  # a cron slot fired

# Far below Python's recursion limit, which the store, CEL and the worker's replay
# would otherwise meet on data that JSON accepts.
MAX_DEPTH = 64
# One send (or one ingest request) is one transaction: a bound keeps it from holding
# the store, and a web worker, for long.
MAX_EVENTS = 10_000
TS_RANGE = (-(2**63), 2**63 - 1)  # what the store's BIGINT column holds
CONTROL_CHARACTERS = frozenset(chr(c) for c in (*range(0x20), 0x7F))


class Event(BaseModel):
    """An event: ``name`` routes it, ``data`` is JSON, ``id`` de-duplicates it for 24 h,
    ``ts`` is milliseconds since the epoch (as in Inngest)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=255)
    data: dict[str, Any] = Field(default_factory=dict)
    id: str | None = Field(default=None, max_length=64)
    # strict: True is not 1 and "12" is not 12 (Inngest's ts is an int64); a
    # datetime is still taken (read as its epoch milliseconds, below)
    ts: int | None = Field(default=None, ge=TS_RANGE[0], le=TS_RANGE[1], strict=True)

    @field_validator("ts", mode="before")
    @classmethod
    def _ts_from_datetime(cls, value: Any) -> Any:
        if isinstance(value, datetime):
            return int(value.timestamp() * 1000)
        return value

    @field_validator("name", "id")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        # A NUL is refused by PostgreSQL and kept by SQLite; names and ids are also
        # what logs and the CLI print. (pydantic refuses lone surrogates itself.)
        if value is not None and not CONTROL_CHARACTERS.isdisjoint(value):
            raise ValueError("must not contain control characters (NUL, newline, ...)")
        return value


def _depth(value: Any) -> int:
    """Nesting depth of JSON-like data, without recursion (the input is untrusted)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if level <= MAX_DEPTH:  # deeper is refused whatever lies below
                stack.extend(
                    (v, level + 1) for v in (item.values() if isinstance(item, dict) else item)
                )
    return deepest


class EventTrigger(BaseModel):
    """Start a run when an event named ``name`` arrives (``prefix/*`` matches a prefix)
    and the optional CEL filter ``if_`` is true."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(min_length=1)
    if_: str | None = None

    def matches_name(self, name: str) -> bool:
        if self.name.endswith("*"):
            return name.startswith(self.name[:-1])
        return name == self.name

    def compiled(self, function_id: str) -> Expression | None:
        if self.if_ is None:
            return None
        return compile_expression(self.if_, f"function {function_id!r} trigger if_")


def event(name: str, if_: str | None = None) -> EventTrigger:
    """A trigger: ``event("order/placed", if_="event.data.total > 0")``."""
    return EventTrigger(name=name, if_=if_)


def prepare_events(events: Event | dict[str, Any] | list[Event | dict[str, Any]]) -> list[Event]:
    """The one validation of events, for ``flow.send``, HTTP ingest and
    ``step.send_event``: everything is checked before anything is written (at most
    ``MAX_EVENTS``; name and id printable; ``ts`` within a BIGINT; data JSON as
    :mod:`celeryflow.codec` writes it, at most ``MAX_DEPTH`` levels deep), then ids
    and timestamps are filled in. A bad event raises EventError naming its position."""
    items = events if isinstance(events, list | tuple) else [events]
    if not items:
        raise EventError("send() needs at least one event")
    if len(items) > MAX_EVENTS:
        raise EventError(
            f"send() takes at most {MAX_EVENTS:,} events at once, got {len(items):,}: "
            "split the list"
        )
    prepared: list[Event] = []
    now_ms = int(time.time() * 1000)
    for index, item in enumerate(items):
        label = f"event #{index}"
        try:
            ev = item if isinstance(item, Event) else Event.model_validate(item)
        except ValidationError as exc:
            raise EventError(f"{label} is invalid: {describe(exc)}") from None
        label = f"event #{index} ({ev.name!r})"
        try:
            data = to_jsonable(ev.data, f"{label} data")
        except SerializationError as exc:
            raise EventError(str(exc)) from None
        if _depth(data) > MAX_DEPTH:
            raise EventError(f"{label} data is nested too deeply (over {MAX_DEPTH} levels)")
        try:
            # validated again: an Event may have been built with model_construct or
            # changed after it was made
            checked = Event(
                name=ev.name,
                data=data,
                id=ev.id or uuid.uuid4().hex,
                ts=ev.ts if ev.ts is not None else now_ms,
            )
        except ValidationError as exc:
            raise EventError(f"{label} is invalid: {describe(exc)}") from None
        prepared.append(checked)
    return prepared


def condition_holds(source: str, run_event: dict[str, Any], candidate: dict[str, Any]) -> bool:
    """A wait's ``if_``: CEL over ``event`` (the run's) and ``async`` (the candidate).
    A stored condition that no longer compiles (one recorded before names were
    checked) matches nothing, as it never did, rather than failing the sender."""
    try:
        expression = compile_expression(source, "wait condition", ASYNC)
    except ExpressionError:
        return False
    return expression.matches({"event": run_event, "async": candidate})
