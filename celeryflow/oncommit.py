"""``flow.send(..., on_commit=...)``: recording events when the caller's transaction
commits. The core imports no web framework: ``celeryflow.django`` registers Django's
``transaction.on_commit`` as the default, and any other hook can be passed as is."""

from __future__ import annotations

from collections.abc import Callable

from .errors import ConfigError

__all__ = ["Defer", "register_default", "resolve"]

#: Calls its argument when the caller's transaction commits (at once outside one),
#: and never if it rolls back: Django's ``transaction.on_commit`` is one.
Defer = Callable[[Callable[[], None]], None]

_default: Defer | None = None


def register_default(defer: Defer) -> None:
    """What ``on_commit=True`` means in this process (``celeryflow.django`` sets it)."""
    global _default
    _default = defer


def resolve(on_commit: bool | Defer) -> Defer:
    if on_commit is True:
        if _default is None:
            raise ConfigError(
                "send(on_commit=True) needs a transaction hook: import celeryflow.django "
                "(Django's transaction.on_commit), or pass the hook itself as on_commit="
            )
        return _default
    if not callable(on_commit):
        raise ConfigError(f"on_commit must be True, False or a callable, got {on_commit!r}")
    return on_commit
