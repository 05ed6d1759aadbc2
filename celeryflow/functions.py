"""Function definitions: what ``@flow.function(...)`` records, validated at decoration."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .durations import parse_duration
from .errors import ConfigError, describe
from .events import CONTROL_CHARACTERS, EventTrigger
from .expressions import ASYNC, Expression, compile_expression
from .flowcontrol import (
    OPTIONS,
    Batch,
    Concurrency,
    Debounce,
    FlowControl,
    Priority,
    RateLimit,
    Singleton,
    Throttle,
)
from .legacy import IGNORED_OPTIONS, RunHandle, call_arguments, start_time
from .schedule import CronTrigger
from .store.rows import WaiterRow, WaitKind, waiter_row
from .store.waits import match_value

if TYPE_CHECKING:
    from .events import Event
    from .flow import Flow

__all__ = [
    "FLOW_CONTROL_OPTIONS",
    "CancelOn",
    "FlowFunction",
    "FunctionConfig",
    "Registry",
    "Timeouts",
]

DEFAULT_RETRIES = 4  # as in Inngest: 4 retries, so 5 attempts per step


class CancelOn(BaseModel):
    """Cancel a run when ``event`` arrives whose ``match`` field equals the run's
    event's (and ``if_``, CEL over ``event`` and ``async``, holds), within ``timeout``.
    What the run started goes with it (its invoke children, its parallel branches,
    theirs in turn), as with ``flow.cancel``, whether the event came from
    ``flow.send``, a run's ``step.send_event`` or a run's failure."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event: str = Field(min_length=1, max_length=255)
    match: str | None = Field(default=None, max_length=255)
    if_: str | None = None
    timeout: timedelta | None = None

    @field_validator("timeout", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return None if value is None else parse_duration(value, "CancelOn timeout")


class Timeouts(BaseModel):
    """Cancel a run not started within ``start`` or not finished within ``finish``
    (both counted from its creation)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: timedelta | None = None
    finish: timedelta | None = None

    @field_validator("start", "finish", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return None if value is None else parse_duration(value, "Timeouts")


class FunctionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    # Any text the Inngest SDK accepts ("fn %$^&*(_+{|:<?☃️"): it is only ever a
    # string (a column, Celery's shadow name, a CLI argument), so only control
    # characters are refused, as in event names, for logs and PostgreSQL's sake.
    id: str = Field(min_length=1, max_length=255)
    triggers: list[EventTrigger | CronTrigger]
    retries: int = Field(default=DEFAULT_RETRIES, ge=0, le=100)
    # a fixed delay between tries (Celery's default_retry_delay) instead of the
    # exponential back-off; RetryAfterError still sets its own
    retry_delay: timedelta | None = None
    cancel_on: list[CancelOn] = Field(default_factory=list)
    timeouts: Timeouts | None = None
    on_failure: str | None = None  # the id of a flow function
    concurrency: list[Concurrency] = Field(default_factory=list)
    throttle: Throttle | None = None
    rate_limit: RateLimit | None = None
    debounce: Debounce | None = None
    batch_events: Batch | None = None
    priority: Priority | None = None
    idempotency: str | None = Field(default=None, min_length=1, max_length=1000)
    singleton: Singleton | None = None
    # names of positional arguments for old call sites: fn.delay("o-1", 9.5)
    params: list[str] | None = None

    @field_validator("id")
    @classmethod
    def _printable_id(cls, value: str) -> str:
        if not CONTROL_CHARACTERS.isdisjoint(value):
            raise ValueError("must not contain control characters (NUL, newline, ...)")
        return value

    @field_validator("retry_delay", mode="before")
    @classmethod
    def _delay(cls, value: Any) -> Any:
        return None if value is None else parse_duration(value, "retry_delay")

    @field_validator("concurrency", mode="before")
    @classmethod
    def _listed(cls, value: Any) -> Any:
        if value is None:
            return []
        return value if isinstance(value, list | tuple) else [value]


# FunctionConfig's flow-control options, in its order (what `celeryflow functions`
# shows); FlowControl reads each one's value from the FunctionConfig
FLOW_CONTROL_OPTIONS = tuple(name for name in FunctionConfig.model_fields if name in OPTIONS)


class FlowFunction:
    """A registered durable function. Calling it directly runs the plain Python function."""

    def __init__(self, flow: Flow, fn: Callable[..., Any], config: FunctionConfig) -> None:
        self.flow = flow
        self.fn = fn
        self.config = config
        self.id = config.id
        self.is_async = inspect.iscoroutinefunction(fn)
        self._filters: list[tuple[EventTrigger, Expression | None]] = [
            (trigger, trigger.compiled(config.id))
            for trigger in config.triggers
            if isinstance(trigger, EventTrigger)
        ]
        self.crons = [t for t in config.triggers if isinstance(t, CronTrigger)]
        for i, cancel in enumerate(config.cancel_on):
            if cancel.if_ is not None:
                compile_expression(cancel.if_, f"function {config.id!r} cancel_on[{i}] if_", ASYNC)
        self.control = FlowControl(config.id, config)
        self.__name__ = getattr(fn, "__name__", config.id)
        self.__doc__ = fn.__doc__

    @classmethod
    def build(
        cls,
        flow: Flow,
        fn: Callable[..., Any],
        *,
        id: str | None,
        trigger: EventTrigger | CronTrigger | list[EventTrigger | CronTrigger] | None,
        retries: int,
        retry_delay: Any = None,
        cancel_on: list[CancelOn | dict[str, Any]] | CancelOn | dict[str, Any] | None = None,
        timeouts: Timeouts | dict[str, Any] | None = None,
        on_failure: str | None = None,
        **flow_control: Any,
    ) -> FlowFunction:
        function_id: str = id or str(getattr(fn, "__name__", ""))
        triggers = [] if trigger is None else trigger if isinstance(trigger, list) else [trigger]
        for t in triggers:
            if not isinstance(t, EventTrigger | CronTrigger):
                raise ConfigError(
                    f"function {function_id!r}: trigger must be event(...) or cron(...), got {t!r}"
                )
            if isinstance(t, CronTrigger):
                t.check(function_id)
        try:
            cancels = (
                []
                if cancel_on is None
                else cancel_on
                if isinstance(cancel_on, list)
                else [cancel_on]
            )
            config = FunctionConfig.model_validate(
                {
                    "id": function_id,
                    "triggers": triggers,
                    "retries": retries,
                    "retry_delay": retry_delay,
                    "cancel_on": cancels,
                    "timeouts": timeouts,
                    "on_failure": on_failure,
                    **flow_control,
                }
            )
        except ValidationError as exc:
            raise ConfigError(
                f"function {function_id!r} is misconfigured: {describe(exc)}"
            ) from None
        return cls(flow, fn, config)

    def wants(self, name: str, variables: dict[str, Any]) -> bool:
        """True when one of the triggers matches this event."""
        for trigger, condition in self._filters:
            if trigger.matches_name(name) and (condition is None or condition.matches(variables)):
                return True
        return False

    def cancel_waits(self, ev: Event, variables: dict[str, Any], now: datetime) -> list[WaiterRow]:
        """The cancel_on waiters a new run of this function starts with."""
        rows = []
        for i, cancel in enumerate(self.config.cancel_on):
            rows.append(
                waiter_row(
                    run_id=None,  # filled in by the caller, who knows the run id
                    key=f"cancel:{i}",
                    kind=WaitKind.CANCEL,
                    event_name=cancel.event,
                    match_field=cancel.match,
                    match_value=(
                        match_value(variables["event"], cancel.match) if cancel.match else None
                    ),
                    condition=cancel.if_,
                    expires_at=now + cancel.timeout if cancel.timeout else None,
                    created_at=now,
                )
            )
        return rows

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    # -- old call sites (a Celery task moved to a flow function) ---------------------

    def delay(self, *args: Any, **kwargs: Any) -> RunHandle:
        """Start a run whose ``event.data`` holds the arguments by name (positional
        ones need ``params=[...]``), as ``task.delay`` did; returns a RunHandle."""
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        *,
        countdown: float | None = None,
        eta: datetime | str | None = None,
        **options: Any,
    ) -> RunHandle:
        """``task.apply_async`` for a flow function: ``countdown``/``eta`` delay the
        run's start; routing options (queue, priority, ...) are accepted and ignored,
        as the store schedules runs; others are a TypeError."""
        unknown = sorted(set(options) - IGNORED_OPTIONS)
        if unknown:
            raise TypeError(f"{self.id}.apply_async() does not support {', '.join(unknown)}")
        data = call_arguments(self.id, self.config.params, list(args or ()), dict(kwargs or {}))
        return self.flow.start(self, data, not_before=start_time(countdown, eta))

    def __repr__(self) -> str:
        return f"<FlowFunction {self.id}>"


class Registry:
    """The functions of one Flow, by id. ``limited``: the ids of those with
    concurrency limits, whose runs take a slot as they are claimed (kept here, not
    recomputed on every claim)."""

    def __init__(self) -> None:
        self.functions: dict[str, FlowFunction] = {}
        self.limited: list[str] = []

    def add(self, function: FlowFunction) -> None:
        if function.id in self.functions:
            raise ConfigError(
                f"function id {function.id!r} is already registered "
                f"(by {self.functions[function.id].fn!r}); ids must be unique"
            )
        self.functions[function.id] = function
        if function.control.concurrency:
            self.limited.append(function.id)

    def get(self, function_id: str) -> FlowFunction | None:
        return self.functions.get(function_id)

    def __contains__(self, function_id: object) -> bool:
        return function_id in self.functions
