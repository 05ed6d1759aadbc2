"""The SQL store: the only package that writes SQL."""

from .store import Claim, DueRun, Store

__all__ = ["Claim", "DueRun", "Store"]
