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
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..errors import ConfigError, ExpressionError
from ..expressions import Expression, compile_expression
from .config import Batch, Concurrency, Debounce, Priority, RateLimit, Singleton, Throttle

__all__ = ["MAX_CONCURRENCY", "PRIORITY_RANGE", "Admission", "FlowControl", "KeyUnavailable"]

log = logging.getLogger("celeryflow.flowcontrol")
MAX_CONCURRENCY = 2  # as Inngest: one limit per key plus one for the whole function
PRIORITY_RANGE = 600  # seconds


@dataclass
class Admission:
    """The controls that apply to one planned run, each with its key's value."""

    idempotency: str | None = None
    rate_limit: tuple[RateLimit, str] | None = None
    singleton: tuple[Singleton, str] | None = None
    debounce: tuple[Debounce, str] | None = None
    batch: tuple[Batch, str] | None = None
    throttle: tuple[Throttle, str] | None = None
    refused: bool = False  # a key failed: the run is recorded skipped, nothing applies

    def __bool__(self) -> bool:
        return self.refused or any(v is not None for k, v in vars(self).items() if k != "refused")


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

    def refuse(self, row: dict[str, Any], now: datetime) -> None:
        """Turn the planned run ``row`` into its skipped record, and say so in the log."""
        log.warning(
            "function %r: %s %r cannot be evaluated for event %s (%s); run %s is skipped",
            self.function_id,
            self.setting,
            self.source,
            row.get("event_id"),
            self.reason,
            row["id"],
        )
        row.update(
            status="skipped",
            error=json.dumps(self.info()),
            ended_at=now,
            due_at=None,
            wake_at=None,
        )


class FlowControl:
    """Compiled flow-control settings of one function."""

    def __init__(
        self,
        function_id: str,
        *,
        concurrency: list[Concurrency],
        throttle: Throttle | None,
        rate_limit: RateLimit | None,
        debounce: Debounce | None,
        batch: Batch | None,
        priority: Priority | None,
        idempotency: str | None,
        singleton: Singleton | None,
    ) -> None:
        self.function_id = function_id
        where = f"function {function_id!r}"
        if len(concurrency) > MAX_CONCURRENCY:
            raise ConfigError(f"{where}: at most {MAX_CONCURRENCY} concurrency limits")
        if debounce is not None and batch is not None:
            raise ConfigError(f"{where}: debounce and batch_events cannot be combined")
        self.concurrency = concurrency
        self.throttle = throttle
        self.rate_limit = rate_limit
        self.debounce = debounce
        self.batch = batch
        self.priority = priority
        self.idempotency = idempotency
        self.singleton = singleton
        self._compiled: dict[str, Expression] = {}
        sources = {
            "idempotency": idempotency,
            "priority.run": priority.run if priority else None,
            "throttle.key": throttle.key if throttle else None,
            "rate_limit.key": rate_limit.key if rate_limit else None,
            "debounce.key": debounce.key if debounce else None,
            "batch_events.key": batch.key if batch else None,
            "singleton.key": singleton.key if singleton else None,
        }
        for i, limit in enumerate(concurrency):
            sources[f"concurrency[{i}].key"] = limit.key
        for name, source in sources.items():
            if source is not None:
                self._compiled[name] = compile_expression(source, f"{where} {name}")

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
        if len(text) > 200:  # keys live in an indexed column; long ones are hashed
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
        out = Admission()
        if self.idempotency is not None:
            out.idempotency = self.key("idempotency", variables)
        if self.rate_limit is not None:
            out.rate_limit = (self.rate_limit, self.key("rate_limit.key", variables))
        if self.singleton is not None:
            out.singleton = (self.singleton, self.key("singleton.key", variables))
        if self.debounce is not None:
            out.debounce = (self.debounce, self.key("debounce.key", variables))
        if self.batch is not None:
            out.batch = (self.batch, self.key("batch_events.key", variables))
        if self.throttle is not None:
            out.throttle = (self.throttle, self.key("throttle.key", variables))
        return out

    def concurrency_keys(self, variables: dict[str, Any]) -> list[str]:
        return [self.key(f"concurrency[{i}].key", variables) for i in range(len(self.concurrency))]
