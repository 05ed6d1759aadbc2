"""Events: the pydantic model, validation at send time, and event triggers."""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .codec import to_jsonable
from .errors import EventError, SerializationError, describe
from .expressions import ASYNC, Expression, compile_expression

__all__ = ["Event", "EventTrigger", "condition_holds", "event", "prepare_events"]


class Event(BaseModel):
    """An event: ``name`` routes it, ``data`` is JSON, ``id`` de-duplicates it for 24 h,
    ``ts`` is milliseconds since the epoch (as in Inngest)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=255)
    data: dict[str, Any] = Field(default_factory=dict)
    id: str | None = Field(default=None, max_length=64)
    ts: int | None = None

    @field_validator("ts", mode="before")
    @classmethod
    def _ts_from_datetime(cls, value: Any) -> Any:
        if isinstance(value, datetime):
            return int(value.timestamp() * 1000)
        return value


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
    """Validate everything before anything is written: ids and timestamps filled in,
    data proven to be JSON. A bad event raises EventError naming its position."""
    items = events if isinstance(events, list | tuple) else [events]
    if not items:
        raise EventError("send() needs at least one event")
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
        prepared.append(
            Event(
                name=ev.name,
                data=data,
                id=ev.id or uuid.uuid4().hex,
                ts=ev.ts if ev.ts is not None else now_ms,
            )
        )
    return prepared


def condition_holds(source: str, run_event: dict[str, Any], candidate: dict[str, Any]) -> bool:
    """A wait's ``if_``: CEL over ``event`` (the run's) and ``async`` (the candidate)."""
    return compile_expression(source, "wait condition", ASYNC).matches(
        {"event": run_event, "async": candidate}
    )
