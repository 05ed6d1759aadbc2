"""Events as the SDK shapes them, and the small translations between the two worlds:
millisecond durations, system event names, and ``if_exp`` conditions."""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ... import events as core_events
from ...errors import ConfigError, EventError, describe
from ...events import FAILED_EVENT, INVOKED_EVENT, SCHEDULED_EVENT
from ._errors import PREFIX

__all__ = [
    "JSON",
    "Event",
    "SDKModel",
    "SendEventsResult",
    "core_name",
    "milliseconds",
    "optional_milliseconds",
    "split_condition",
    "to_core_event",
    "to_sdk_event",
]

JSON: TypeAlias = bool | int | float | str | Mapping[str, object] | Sequence[object] | None

# celeryflow's system events, under the names Inngest gives them. Functions see the
# Inngest names (ctx.event.name); triggers, waits and cancels may use either.
_SDK_NAMES = {
    FAILED_EVENT: "inngest/function.failed",
    INVOKED_EVENT: "inngest/function.invoked",
    SCHEDULED_EVENT: "inngest/scheduled.timer",
}
_CORE_NAMES = {sdk: core for core, sdk in _SDK_NAMES.items()}


ModelT = TypeVar("ModelT", bound="SDKModel")


class SDKModel(BaseModel):
    """The SDK's models are strict pydantic models; an invalid one raises at
    construction. Unknown fields are refused here (the SDK ignores them), so a
    misspelt option fails instead of silently doing nothing."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(f"{PREFIX}: {type(self).__name__}: {describe(exc)}") from None

    @classmethod
    def from_raw(cls: type[ModelT], raw: object) -> ModelT | Exception:
        """The model from a dict or JSON text; the error is returned, not raised,
        as the SDK's ``from_raw`` does."""
        try:
            if isinstance(raw, str | bytes):
                raw = json.loads(raw)
            if not isinstance(raw, Mapping):
                raise ConfigError(f"{PREFIX}: {cls.__name__}.from_raw: expected an object")
            return cls(**raw)
        except (ConfigError, ValueError, TypeError) as exc:
            return exc


class Event(SDKModel):
    """``inngest.Event(name=..., data={...}, id="", ts=0)``: an empty ``id`` gets one
    at send time, ``ts`` 0 means now (milliseconds since the epoch)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=False)

    data: Mapping[str, Any] = {}
    id: str = ""
    name: str
    ts: int = 0

    @field_validator("data", mode="before")
    @classmethod
    def _ensure_dict(cls, value: Any) -> Any:
        return value or {}  # the SDK accepts data=None


def core_name(name: str) -> str:
    """The celeryflow name of an event the SDK names ``inngest/...``."""
    return _CORE_NAMES.get(name, name)


def to_core_event(item: Event | core_events.Event | Mapping[str, Any]) -> core_events.Event:
    if isinstance(item, core_events.Event):
        return item
    if isinstance(item, Mapping):
        item = Event(**item)
    if not isinstance(item, Event):
        raise EventError(f"{PREFIX}: expected an inngest.Event, got {type(item).__name__}")
    return core_events.Event(
        name=item.name, data=dict(item.data), id=item.id or None, ts=item.ts or None
    )


def to_sdk_event(ev: core_events.Event) -> Event:
    data = dict(ev.data)
    if ev.name == FAILED_EVENT and isinstance(data.get("error"), dict):
        # Inngest's failure payload names the error type "name"; celeryflow's "type".
        error = dict(data["error"])
        error.setdefault("name", error.get("type", "Error"))
        data["error"] = error
    return Event(name=_SDK_NAMES.get(ev.name, ev.name), data=data, id=ev.id or "", ts=ev.ts or 0)


def milliseconds(value: object, what: str) -> datetime.timedelta:
    """An SDK duration: an int is MILLISECONDS (not seconds), or a timedelta."""
    if isinstance(value, datetime.timedelta):
        delta = value
    elif isinstance(value, int) and not isinstance(value, bool):
        delta = datetime.timedelta(milliseconds=value)
    else:
        raise ConfigError(
            f"{PREFIX}: {what}: expected milliseconds (int) or a timedelta, "
            f"got {type(value).__name__}"
        )
    if delta < datetime.timedelta(0):
        raise ConfigError(f"{PREFIX}: {what}: a duration cannot be negative, got {value!r}")
    return delta


def optional_milliseconds(value: object, what: str) -> datetime.timedelta | None:
    return None if value is None else milliseconds(value, what)


_SIDE = r"(event|async)\.(data(?:\.[A-Za-z_][A-Za-z0-9_]*)+)"
_SAME_FIELD = re.compile(rf"^\s*{_SIDE}\s*==\s*{_SIDE}\s*$")


def split_condition(if_exp: str | None) -> tuple[str | None, str | None]:
    """``(match, if_)`` for a wait or cancel condition.

    ``event.data.X == async.data.X`` (either order) also becomes ``match="data.X"``,
    so the store finds the waiting runs with one index lookup instead of testing
    every waiter. The expression is kept as ``if_`` too, so CEL has the last word
    (``match`` never pairs a field both events lack, either)."""
    if if_exp is None:
        return None, None
    found = _SAME_FIELD.match(if_exp)
    if found and {found[1], found[3]} == {"event", "async"} and found[2] == found[4]:
        return found[2], if_exp
    return None, if_exp


class SendEventsResult(BaseModel):
    """What ``after_send_events`` is given: the ids sent, and the error if any."""

    error: str | None = None
    ids: list[str] = Field(default_factory=list)
