"""The SQL store: the only package that writes SQL."""

from .session import Claim, RunSession, StepWrite
from .store import DueRun, PlannedRun, Recorded, Store

__all__ = ["Claim", "DueRun", "PlannedRun", "Recorded", "RunSession", "StepWrite", "Store"]
