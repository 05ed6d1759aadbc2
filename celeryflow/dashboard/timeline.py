"""A run's step waterfall: each step as a bar on one time axis, from the run's
creation to its end (or now). Drawn as SVG attributes in the template, so the page
needs no inline style (the Content-Security-Policy forbids it)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..runs import StepKind
from ..store.views import RunDetail, StepRow

__all__ = ["Bar", "Waterfall", "waterfall"]

MIN_WIDTH = 0.4  # percent: a 1 ms step is still visible


@dataclass(frozen=True)
class Bar:
    step: StepRow
    x: float  # percent of the axis
    width: float
    css: str  # "run", "sleep", "wait", "failed", "retrying", "open"
    until: datetime | None  # a sleep's wake time, a wait's timeout
    seconds: float | None  # the step's duration, when it has ended


@dataclass(frozen=True)
class Waterfall:
    bars: list[Bar]
    start: datetime
    end: datetime

    @property
    def span_seconds(self) -> float:
        return (self.end - self.start).total_seconds()

    def ticks(self) -> list[dict[str, Any]]:
        """Five labels along the axis: offset from the run's creation."""
        return [{"x": i * 25, "seconds": self.span_seconds * i / 4} for i in range(5)]


def _css(step: StepRow) -> str:
    if step.status in ("failed", "retrying"):
        return step.status
    if step.kind == StepKind.SLEEP:
        return "sleep"
    if step.kind == StepKind.WAIT:
        return "wait"
    return "run" if step.ended_at is not None else "open"


def waterfall(detail: RunDetail, now: datetime) -> Waterfall:
    run = detail.run
    start = run.created_at
    # a parked step's bar runs to its wake time (a sleep) or timeout (a wait)
    ends = {
        s.key: s.ended_at or (s.wake_at if s.status in ("sleeping", "waiting") else None) or now
        for s in detail.steps
    }
    end = max([run.ended_at or now, *ends.values()])
    span = max((end - start).total_seconds(), 1e-3)
    bars = []
    for step in detail.steps:
        began = step.started_at or start
        x = max(0.0, (began - start).total_seconds() / span * 100)
        width = max(MIN_WIDTH, (ends[step.key] - began).total_seconds() / span * 100)
        seconds = (step.ended_at - began).total_seconds() if step.ended_at else None
        until = step.wake_at if step.kind in (StepKind.SLEEP, StepKind.WAIT) else None
        bars.append(
            Bar(step, round(x, 3), round(min(width, 100 - x), 3), _css(step), until, seconds)
        )
    return Waterfall(bars, start, end)
