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
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar, cast

import sqlalchemy.exc as sa_exc
from kombu.exceptions import OperationalError as KombuOperationalError

from .durations import utcnow
from .errors import Unavailable

if TYPE_CHECKING:
    from .engine import Execution
    from .store import StepWrite

__all__ = ["BROKER_ERRORS", "guarded", "is_disconnect", "is_infrastructure", "release_after"]

RESULTS = ("completed", "failed")  # step rows that settle a step

log = logging.getLogger("celeryflow.engine")
T = TypeVar("T")

# What publishing raises when the broker, not the message, is the problem: kombu
# wraps connection errors in its OperationalError once the publish retry policy is
# spent; a socket error (OSError) may come through bare when retries are off.
BROKER_ERRORS: tuple[type[BaseException], ...] = (KombuOperationalError, OSError)
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

        # found in the instance from now on: no __getattr__ and no new wrapper per
        # call (a store method runs once per step)
        self.__dict__[name] = call
        return call


def guarded(target: T, what: str, patience: timedelta = timedelta(0)) -> T:
    """``target`` (the store, a run session, the doorbell) whose every method raises
    :class:`Unavailable` for an infrastructure error, once ``patience`` is spent
    trying again (a lost connection is tried again at once, even without patience).
    ``what`` names it in logs ("store", "broker")."""
    return cast(T, _Guard(target, what, patience.total_seconds()))


def release_after(
    execution: Execution, exc: Unavailable, in_flight: list[StepWrite], pending: list[StepWrite]
) -> datetime | None:
    """The store or the broker failed under the run ``execution`` executes: not the user's
    failure. The run is queued again for one reconcile interval, attempt unchanged,
    and then resumes from its memo, with the step results whose write failed
    (``in_flight``, and those not yet handed over, ``pending``) written now, so those
    steps do not run again. If the store still does not answer, the lease lapses and
    the reconciler rings the run all the same. Returns when to ring it, or None."""
    wake = utcnow() + execution.settings.reconcile_interval
    due = execution.due_for(wake)
    unsent = _results(pending)
    try:
        try:
            writes = [*_results(in_flight), *unsent]
            released = execution.session.release(
                execution.run_id, execution.fence, wake_at=wake, due_at=due, writes=writes
            )
        except sa_exc.IntegrityError:  # the write that seemed to fail did land: drop it
            released = execution.session.release(
                execution.run_id, execution.fence, wake_at=wake, due_at=due, writes=unsent
            )
    except Unavailable as again:
        execution.log.warning(
            "%s; releasing the run failed too (%s): it resumes after its lease", exc, again
        )
        return None
    if not released:  # the write that seemed to fail did commit: the run moved on
        execution.log.warning("%s; the run had moved on meanwhile", exc)
        return None
    execution.log.warning("%s; no attempt counted, the run resumes at %s", exc, wake)
    return wake


def _results(writes: list[StepWrite]) -> list[StepWrite]:
    """The plain step results among ``writes``: rows that need nothing else written
    with them (a sleep's or a wait's parking row needs its run's move or its waiter,
    a send_event's row its events), so they can be written on their own."""
    return [w for w in writes if w[0]["kind"] in ("run", "sleep") and w[0]["status"] in RESULTS]
