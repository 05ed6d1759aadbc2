"""Function definitions: what ``@flow.function(...)`` records, validated at decoration."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError, describe
from .events import EventTrigger
from .expressions import Expression

if TYPE_CHECKING:
    from .flow import Flow

__all__ = ["FlowFunction", "FunctionConfig"]

DEFAULT_RETRIES = 4  # as in Inngest: 4 retries, so 5 attempts per step


class FunctionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    id: str = Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_.:/\-]+$")
    triggers: list[EventTrigger]
    retries: int = Field(default=DEFAULT_RETRIES, ge=0, le=100)


class FlowFunction:
    """A registered durable function. Calling it directly runs the plain Python function."""

    def __init__(self, flow: Flow, fn: Callable[..., Any], config: FunctionConfig) -> None:
        self.flow = flow
        self.fn = fn
        self.config = config
        self.id = config.id
        self.is_async = inspect.iscoroutinefunction(fn)
        self._filters: list[tuple[EventTrigger, Expression | None]] = [
            (trigger, trigger.compiled(config.id)) for trigger in config.triggers
        ]
        self.__name__ = getattr(fn, "__name__", config.id)
        self.__doc__ = fn.__doc__

    @classmethod
    def build(
        cls,
        flow: Flow,
        fn: Callable[..., Any],
        *,
        id: str | None,
        trigger: EventTrigger | list[EventTrigger] | None,
        retries: int,
    ) -> FlowFunction:
        function_id: str = id or str(getattr(fn, "__name__", ""))
        triggers = [] if trigger is None else trigger if isinstance(trigger, list) else [trigger]
        for t in triggers:
            if not isinstance(t, EventTrigger):
                raise ConfigError(
                    f"function {function_id!r}: trigger must be event(...), got {t!r}"
                )
        try:
            config = FunctionConfig(id=function_id, triggers=triggers, retries=retries)
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

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<FlowFunction {self.id}>"
