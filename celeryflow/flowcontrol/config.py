"""Flow-control settings of a function, as Inngest names them.

Each accepts its model or a plain dict; periods take any form ``step.sleep`` takes.
Keys and the priority expression are CEL over ``event``, compiled at decoration
time so a typo fails there, naming the function and the setting.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..durations import parse_duration

__all__ = [
    "Batch",
    "Concurrency",
    "Debounce",
    "Priority",
    "RateLimit",
    "Singleton",
    "Throttle",
]


def _period(value: Any, what: str) -> Any:
    if value is None:
        return None
    delta = parse_duration(value, what)
    if delta <= timedelta(0):
        raise ValueError(f"{what} must be longer than zero")
    return delta


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Concurrency(_Config):
    """At most ``limit`` runs *executing steps* at once (per value of ``key``, CEL over
    ``event``; without a key, for the whole function). Sleeping and waiting runs hold
    no slot; runs over the limit wait in the store, oldest (priority aside) first.

    ``scope="shared"`` (Inngest's ``env``/``account`` scope) counts the runs of every
    function whose shared limit's key gives the same value, e.g. ``key='"openai"'``
    on each function that calls one API; it needs a ``key``. Each function checks
    its own ``limit`` against the shared count, so give them the same one."""

    limit: int = Field(ge=1, le=100_000)
    key: str | None = Field(default=None, max_length=1000)
    scope: Literal["function", "shared"] = "function"

    @model_validator(mode="after")
    def _shared_needs_a_key(self) -> Concurrency:
        if self.scope == "shared" and self.key is None:
            raise ValueError(
                "Concurrency(scope='shared') needs a key: the runs of every function whose "
                "key gives the same value share the limit"
            )
        return self


class Throttle(_Config):
    """Start at most ``limit`` runs per ``period`` (per ``key``), ``burst`` of them at
    once; runs beyond the rate are started later, none dropped (GCRA, as Inngest)."""

    limit: int = Field(ge=1, le=100_000)
    period: timedelta
    burst: int = Field(default=1, ge=1, le=100_000)
    key: str | None = Field(default=None, max_length=1000)

    @field_validator("period", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return _period(value, "Throttle period")


class RateLimit(_Config):
    """At most ``limit`` runs per ``period`` (per ``key``); events beyond it start no
    run (a ``skipped`` run records why)."""

    limit: int = Field(ge=1, le=100_000)
    period: timedelta
    key: str | None = Field(default=None, max_length=1000)

    @field_validator("period", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return _period(value, "RateLimit period")


class Debounce(_Config):
    """One run, with the last event, once no event (per ``key``) came for ``period``;
    ``timeout`` caps the delay from the first event."""

    period: timedelta
    key: str | None = Field(default=None, max_length=1000)
    timeout: timedelta | None = None

    @field_validator("period", "timeout", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return _period(value, "Debounce period/timeout")


class Batch(_Config):
    """One run receives ``ctx.events`` (up to ``max_size``, per ``key``) when the batch
    is full or ``timeout`` after its first event."""

    max_size: int = Field(ge=1, le=1000)
    timeout: timedelta
    key: str | None = Field(default=None, max_length=1000)

    @field_validator("timeout", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return _period(value, "Batch timeout")


class Priority(_Config):
    """``run``: CEL over ``event`` giving seconds (-600..600) by which a run moves
    ahead of (or, negative, behind) other runs of the function queued for a slot."""

    run: str = Field(min_length=1, max_length=1000)


class Singleton(_Config):
    """At most one unfinished run per ``key``: a new one is ``skip``ped, or ``cancel``s
    the one in flight."""

    key: str | None = Field(default=None, max_length=1000)
    mode: Literal["skip", "cancel"] = "skip"
