"""Function options as the SDK spells them, and their celeryflow equivalents.

Every duration that is an int is MILLISECONDS, as in the SDK (celeryflow reads a bare
number as seconds), so each model converts its periods before handing them over.
"""

from __future__ import annotations

import datetime
import re
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from ... import flowcontrol
from ...errors import ConfigError, describe
from ...events import EventTrigger
from ...functions import CancelOn
from ...functions import Timeouts as CoreTimeouts
from ...schedule import CronTrigger
from ._errors import PREFIX, not_supported
from ._events import SDKModel, core_name, milliseconds, optional_milliseconds, split_condition

__all__ = [
    "Batch",
    "Cancel",
    "Concurrency",
    "Debounce",
    "Priority",
    "RateLimit",
    "Singleton",
    "Throttle",
    "Timeouts",
    "TriggerCron",
    "TriggerEvent",
]

Duration = int | datetime.timedelta
M = TypeVar("M", bound=BaseModel)


def _build(model: type[M], what: str, **values: Any) -> M:
    try:
        return model(**values)
    except ValidationError as exc:
        raise ConfigError(f"{PREFIX}: {what}: {describe(exc)}") from None


class TriggerEvent(SDKModel):
    """``TriggerEvent(event="shop/order.placed", expression="event.data.total > 0")``."""

    event: str
    expression: str | None = None

    def to_core(self) -> EventTrigger:
        return _build(EventTrigger, "TriggerEvent", name=core_name(self.event), if_=self.expression)


_TZ_PREFIX = re.compile(r"^\s*(?:CRON_)?TZ=(\S+)\s+(.+)$")


class TriggerCron(SDKModel):
    """``TriggerCron(cron="0 9 * * 1-5")``; Inngest's ``"TZ=Europe/Paris 0 9 * * *"``
    prefix sets the time zone."""

    cron: str
    jitter: str | None = None  # a duration string ("30s", "5m"), as Inngest's

    def to_core(self) -> CronTrigger:
        expression, tz = self.cron, None
        prefixed = _TZ_PREFIX.match(self.cron)
        if prefixed:
            tz, expression = prefixed[1], prefixed[2].strip()
        return _build(CronTrigger, "TriggerCron", expression=expression, tz=tz, jitter=self.jitter)


class Concurrency(SDKModel):
    """At most ``limit`` runs executing steps at once, per value of ``key``.
    ``scope="env"`` or ``"account"`` shares the limit with every function whose key
    gives the same value (one store is one environment here, so the two are alike):
    celeryflow's ``scope="shared"``."""

    key: str | None = None
    limit: int
    scope: Literal["account", "env", "fn"] | None = None

    def to_core(self) -> flowcontrol.Concurrency:
        scope = "function" if self.scope in (None, "fn") else "shared"
        return _build(
            flowcontrol.Concurrency, "Concurrency", limit=self.limit, key=self.key, scope=scope
        )


class Throttle(SDKModel):
    """Start at most ``limit`` runs per ``period`` (ms or timedelta), ``burst`` at once."""

    key: str | None = None
    limit: int
    period: Duration
    burst: int | None = 1

    def to_core(self) -> flowcontrol.Throttle:
        return _build(
            flowcontrol.Throttle,
            "Throttle",
            limit=self.limit,
            period=milliseconds(self.period, "Throttle period"),
            burst=1 if self.burst is None else self.burst,
            key=self.key,
        )


class RateLimit(SDKModel):
    """At most ``limit`` runs per ``period`` (ms or timedelta); further events are skipped."""

    key: str | None = None
    limit: int
    period: Duration

    def to_core(self) -> flowcontrol.RateLimit:
        return _build(
            flowcontrol.RateLimit,
            "RateLimit",
            limit=self.limit,
            period=milliseconds(self.period, "RateLimit period"),
            key=self.key,
        )


class Debounce(SDKModel):
    """One run with the last event once none came for ``period`` (ms or timedelta)."""

    key: str | None = None
    period: Duration
    timeout: Duration | None = None

    def to_core(self) -> flowcontrol.Debounce:
        return _build(
            flowcontrol.Debounce,
            "Debounce",
            period=milliseconds(self.period, "Debounce period"),
            key=self.key,
            timeout=optional_milliseconds(self.timeout, "Debounce timeout"),
        )


class Batch(SDKModel):
    """Runs get ``ctx.events``: up to ``max_size`` events, or what came within
    ``timeout`` (ms or timedelta) of the first."""

    max_size: int
    timeout: Duration | None = None
    key: str | None = None
    if_exp: str | None = None

    def to_core(self) -> flowcontrol.Batch:
        if self.if_exp is not None:
            raise not_supported("Batch(if_exp=...)", "filter with the trigger's expression")
        if self.timeout is None:
            raise not_supported("Batch(timeout=None)", "give the batch a timeout")
        return _build(
            flowcontrol.Batch,
            "Batch",
            max_size=self.max_size,
            timeout=milliseconds(self.timeout, "Batch timeout"),
            key=self.key,
        )


class Priority(SDKModel):
    """``run``: CEL over ``event`` giving seconds (-600..600) to move ahead in the queue."""

    run: str

    def to_core(self) -> flowcontrol.Priority:
        return _build(flowcontrol.Priority, "Priority", run=self.run)


class Singleton(SDKModel):
    """At most one unfinished run per ``key``: ``mode="skip"`` or ``"cancel"``."""

    key: str | None = None
    mode: Literal["skip", "cancel"]

    def to_core(self) -> flowcontrol.Singleton:
        return _build(flowcontrol.Singleton, "Singleton", key=self.key, mode=self.mode)


class Timeouts(SDKModel):
    """Cancel a run not started within ``start`` or not finished within ``finish``."""

    start: Duration | None = None
    finish: Duration | None = None

    def to_core(self) -> CoreTimeouts:
        return _build(
            CoreTimeouts,
            "Timeouts",
            start=optional_milliseconds(self.start, "Timeouts start"),
            finish=optional_milliseconds(self.finish, "Timeouts finish"),
        )


class Cancel(SDKModel):
    """Cancel the run when ``event`` arrives and ``if_exp`` (CEL over ``event``, the
    run's, and ``async``, the incoming one) holds, within ``timeout`` (ms or timedelta)."""

    event: str
    if_exp: str | None = None
    timeout: Duration | None = None

    def to_core(self) -> CancelOn:
        match, if_ = split_condition(self.if_exp)
        return _build(
            CancelOn,
            "Cancel",
            event=core_name(self.event),
            match=match,
            if_=if_,
            timeout=optional_milliseconds(self.timeout, "Cancel timeout"),
        )
