"""A function's flow control, compiled once, and what it makes of one event.

The decisions that need the store (is this key taken, how far is the throttle's
schedule) are made by :mod:`celeryflow.store.flowkeys` in the transaction that
records the event; this module only evaluates keys.

A key that cannot be evaluated for an event (a missing field, say) never counts as
some shared value: that would quietly merge every such event under one key, and a
per-customer limit would become one global limit. The event's run is recorded
``skipped`` instead, with the setting and the reason in its error
(:class:`KeyUnavailable`), and a warning is logged. A priority that cannot be
evaluated counts as 0, which merges nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, ExpressionError
from ..expressions import Expression, compile_expression
from .config import Concurrency, Priority
from .controls import ADMISSION_CONTROLS, BatchControl, Control, DebounceControl

__all__ = [
    "MAX_CONCURRENCY",
    "OPTIONS",
    "PRIORITY_RANGE",
    "SHARED",
    "Admission",
    "FlowControl",
    "KeyUnavailable",
]

log = logging.getLogger("celeryflow.flowcontrol")
MAX_CONCURRENCY = 2  # as Inngest: one limit per key plus one for the whole function
PRIORITY_RANGE = 600  # seconds
# A stored concurrency key starting with this is shared across functions
# (Concurrency(scope="shared")); a function's own key that happens to start with it
# is stored hashed, so the two never meet.
SHARED = "\x1fshared:"
# The options a function's FunctionConfig gives flow control (the one source of their
# values; FlowControl reads them there by these names).
OPTIONS = ("concurrency", "priority", *(c.option for c in ADMISSION_CONTROLS))


@dataclass
class Admission:
    """The controls that apply to one planned run, each with its key's value, in the
    order they decide (controls.ADMISSION_CONTROLS)."""

    keyed: list[tuple[Control[Any], str]] = field(default_factory=list)
    refused: bool = False  # a key failed: the run is recorded skipped, nothing applies

    def __bool__(self) -> bool:
        return self.refused or bool(self.keyed)


class KeyUnavailable(ExpressionError):
    """A key expression failed for one event: its run is recorded ``skipped`` with
    :meth:`info` as its error, rather than sharing a key with unrelated events."""

    def __init__(self, function_id: str, setting: str, source: str, reason: str) -> None:
        super().__init__(f"function {function_id!r} {setting}: {reason}")
        self.function_id = function_id
        self.setting = setting
        self.source = source
        self.reason = reason

    def info(self) -> dict[str, Any]:
        return {
            "type": "ExpressionError",
            "reason": "key",
            "setting": self.setting,
            "expression": self.source,
            "message": f"{self.setting} {self.source!r} cannot be evaluated for this event: "
            f"{self.reason}",
        }

    def refuse(self, run_id: str, event_id: str | None) -> str:
        """Say in the log that run ``run_id`` is skipped; returns its error (JSON),
        which the planner records on the run (planning.py)."""
        log.warning(
            "function %r: %s %r cannot be evaluated for event %s (%s); run %s is skipped",
            self.function_id,
            self.setting,
            self.source,
            event_id,
            self.reason,
            run_id,
        )
        return json.dumps(self.info())


class FlowControl:
    """Compiled flow-control settings of one function.

    ``options`` is the function's ``FunctionConfig`` (any object with the
    :data:`OPTIONS` as attributes): the one source of the settings. A setting is
    also an attribute here (``control.throttle``), None when not set."""

    def __init__(self, function_id: str, options: Any) -> None:
        self.function_id = function_id
        where = f"function {function_id!r}"
        concurrency: list[Concurrency] = list(getattr(options, "concurrency", None) or [])
        if len(concurrency) > MAX_CONCURRENCY:
            raise ConfigError(f"{where}: at most {MAX_CONCURRENCY} concurrency limits")
        self.concurrency = concurrency
        self.priority: Priority | None = getattr(options, "priority", None)
        # the controls that decide at the event, in their order
        self.controls: list[Control[Any]] = [
            control(getattr(options, control.option))
            for control in ADMISSION_CONTROLS
            if getattr(options, control.option, None) is not None
        ]
        kinds = {type(c) for c in self.controls}
        if DebounceControl in kinds and BatchControl in kinds:
            raise ConfigError(f"{where}: debounce and batch_events cannot be combined")
        self._settings = {c.option: c.setting for c in self.controls}
        self._compiled: dict[str, Expression] = {}
        sources = {c.label: c.key_source for c in self.controls}
        sources["priority.run"] = self.priority.run if self.priority else None
        for i, limit in enumerate(concurrency):
            sources[f"concurrency[{i}].key"] = limit.key
        for name, source in sources.items():
            if source is not None:
                self._compiled[name] = compile_expression(source, f"{where} {name}")

    def __getattr__(self, name: str) -> Any:
        """A control's setting by its option name (``control.throttle``); None if unset."""
        if name in OPTIONS:
            return self.__dict__.get("_settings", {}).get(name)
        raise AttributeError(name)

    def key(self, name: str, variables: dict[str, Any]) -> str:
        """The value of the key expression ``name`` for an event ("" without one);
        raises KeyUnavailable when it cannot be evaluated."""
        expression = self._compiled.get(name)
        if expression is None:
            return ""
        try:
            value = expression.evaluate(variables)
        except ExpressionError as exc:
            reason = str(exc.__cause__ or exc)
            raise KeyUnavailable(self.function_id, name, expression.source, reason) from None
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
        if len(text) > 200 or text.startswith(SHARED):
            # keys live in an indexed column; long ones (and lookalikes of a shared
            # key) are hashed
            text = "sha256:" + hashlib.sha256(text.encode()).hexdigest()
        return text

    def priority_seconds(self, variables: dict[str, Any]) -> int:
        expression = self._compiled.get("priority.run")
        if expression is None:
            return 0
        try:
            value = expression.evaluate(variables)
        except ExpressionError as exc:
            log.warning("function %r priority: %s; using 0", self.function_id, exc)
            return 0
        if isinstance(value, bool) or not isinstance(value, int | float):
            log.warning(
                "function %r priority gave %r, not a number; using 0", self.function_id, value
            )
            return 0
        return max(-PRIORITY_RANGE, min(PRIORITY_RANGE, int(value)))

    def admission(self, variables: dict[str, Any]) -> Admission:
        return Admission([(c, self.key(c.label, variables)) for c in self.controls])

    def concurrency_keys(self, variables: dict[str, Any]) -> list[str]:
        """The stored key of each limit: a shared limit's carries :data:`SHARED`."""
        keys = []
        for i, limit in enumerate(self.concurrency):
            key = self.key(f"concurrency[{i}].key", variables)
            keys.append(SHARED + key if limit.scope == "shared" else key)
        return keys
