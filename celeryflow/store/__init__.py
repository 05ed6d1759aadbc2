"""The SQL store: the only package that writes SQL."""

from .flowkeys import SlotHandOver
from .session import Claim, RunSession, StepWrite
from .store import EVENT_DEDUP_WINDOW, DueRun, PlannedRun, Recorded, Store

__all__ = [
    "EVENT_DEDUP_WINDOW",
    "Claim",
    "DueRun",
    "PlannedRun",
    "Recorded",
    "RunSession",
    "SlotHandOver",
    "StepWrite",
    "Store",
]
