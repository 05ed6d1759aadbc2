"""Infrastructure errors: the store or the broker failed, not the user's code.

The rule: an error raised by celeryflow's *own* store or broker calls while a run
executes never counts as an attempt of the user's code. The engine reaches the
store and the broker through :func:`guarded` objects, which turn such an error into
:class:`~celeryflow.errors.Unavailable` (a ``BaseException``, so a user's
``except Exception`` around a step cannot swallow it); the run leaves the worker
and comes back later from its memo. The same exception type raised by the user's
step body (a query on the user's own database) is the user's error, as before:
only what the guarded calls raise is reclassified.

Before giving up, a store call is tried again with a short back-off for a while
(the engine's patience is half a lease: the run is surely still this executor's),
and a dropped connection (``pg_terminate_backend``, a proxy or a failover closing
it) at once on a fresh one: a restart of the database or a transient disconnect
between two steps is then invisible to the run. Every write the engine makes is
fenced, so the retry of a write whose commit did land is refused or conflicts,
and the run leaves the worker; nothing is written twice.
"""

from __future__ import annotations

import functools
import logging
import time
from datetime import timedelta
from typing import Any, TypeVar, cast

import sqlalchemy.exc as sa_exc

from .errors import Unavailable
from .tasks import BROKER_ERRORS

__all__ = ["guarded", "is_disconnect", "is_infrastructure"]

log = logging.getLogger("celeryflow.engine")
T = TypeVar("T")

# What a store call raises when the database, not the statement, is the problem:
# a lost or refused connection, a timeout, a lock or deadlock that a later try
# clears. DataError, IntegrityError and ProgrammingError are not in it: retrying
# the same statement would fail the same way.
STORE_ERRORS: tuple[type[BaseException], ...] = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,  # no pooled connection came free in time
)


def is_disconnect(exc: BaseException) -> bool:
    """The connection was lost: a fresh one may well work at once."""
    return isinstance(exc, sa_exc.DBAPIError) and bool(exc.connection_invalidated)


def is_infrastructure(exc: BaseException) -> bool:
    """An error of the store or the broker, as opposed to one of a statement."""
    return is_disconnect(exc) or isinstance(exc, STORE_ERRORS + BROKER_ERRORS)


class _Guard:
    """Calls through to ``target``; see :func:`guarded`."""

    def __init__(self, target: Any, what: str, patience: float) -> None:
        self._target = target
        self._what = what
        self._patience = patience

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if not callable(attribute):
            return attribute

        @functools.wraps(attribute)
        def call(*args: Any, **kwargs: Any) -> Any:
            deadline = time.monotonic() + self._patience
            pause = 0.1
            failed: BaseException | None = None
            while True:
                try:
                    return attribute(*args, **kwargs)
                except Exception as exc:
                    if failed is not None and isinstance(exc, sa_exc.IntegrityError):
                        # the failed try's commit did land after all: leave, resume from memo
                        raise Unavailable(self._what, name, failed) from exc
                    if not is_infrastructure(exc):
                        raise
                    wait = 0.0 if failed is None and is_disconnect(exc) else pause
                    if time.monotonic() + wait > deadline:
                        raise Unavailable(self._what, name, exc) from exc
                    if failed is None:
                        log.warning(
                            "%s.%s failed (%s: %s); trying again for up to %.0f s",
                            self._what,
                            name,
                            type(exc).__name__,
                            str(exc).strip().splitlines()[0] if str(exc).strip() else "",
                            self._patience,
                        )
                    failed = exc
                    time.sleep(wait)
                    if wait:
                        pause = min(pause * 2, 1.0)

        return call


def guarded(target: T, what: str, patience: timedelta = timedelta(0)) -> T:
    """``target`` (the store, a run session, the doorbell) whose every method raises
    :class:`Unavailable` for an infrastructure error, once ``patience`` is spent
    trying again (a lost connection is tried again at once, even without patience).
    ``what`` names it in logs ("store", "broker")."""
    return cast(T, _Guard(target, what, patience.total_seconds()))
