"""The SQL store: the only package that writes SQL."""

from .session import Claim, RunSession, StepWrite
from .store import DueRun, Store

__all__ = ["Claim", "DueRun", "RunSession", "StepWrite", "Store"]
