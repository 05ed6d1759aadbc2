"""The reconciler: rings the doorbell again for runs whose next move is overdue, and
fires due cron slots.

The store is the truth and the broker is only the doorbell: a lost message, a
worker killed mid-step or a long sleep are all the same case here — a run whose
``due_at`` has passed. It runs as a beat entry and as a thread in each worker;
several at once are harmless (the lease lets one executor through).

The worker's thread also fires cron slots, so a plain ``celery worker`` (no ``-B``,
no beat) runs cron functions; the ``cf_cron_ticks`` ledger lets one worker or beat
per (function, slot) create the run. The thread wakes at the next slot of any cron
function (and at least every ``tick_interval`` while cron functions exist, which
also covers a wall clock that jumps), so a slot fires within milliseconds; between
slots a wake-up costs no query. Without cron functions it wakes only for the
reconciler pass.

Each pass ends with the retention pass (:meth:`Reconciler.prune`): whoever takes the
store's prune lease removes ended runs, old events and expired keys in short batches
(``store/prune.py``), at most once per ``prune_interval`` for the whole store and for
at most ``PRUNE_BUDGET`` seconds per pass, so ringing is never held up for long.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import socket
import sys
import threading
import time
from collections import defaultdict
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from .durations import utcnow
from .hooks import Reconciled
from .store.database import store_error_line
from .store.health import beat
from .store.prune import Pruned, prune, release_lease, renew_lease, take_lease

if TYPE_CHECKING:
    from .flow import Flow

__all__ = ["PRUNE_BUDGET", "CronClock", "Reconciler", "ReconcilerThread"]

log = logging.getLogger("celeryflow.reconciler")
PRUNE_BUDGET = 2.0  # seconds of pruning per pass; work left over continues next pass
# cron ticks this close to a trigger's latest slot are kept: a worker whose clock is
# behind may still look at the slot before it
CRON_MARGIN = timedelta(minutes=1)

# The prefork pool forks its children from the worker's main process, where the
# reconciler thread runs: at start, and again whenever a child is replaced
# (--max-tasks-per-child, a child killed, a time limit). The thread itself lives in
# the main process only (a fork copies no thread, and nothing starts one in a pool
# child), but a child forked in the middle of a pass inherits the locks the pass held,
# taken by a thread the child does not have. Each library resets its own after a fork
# (SQLAlchemy's pool: store/database.py; the embedded broker's: kombu_sqlite.py,
# which makes a fork wait for its SQLite calls; Celery's and kombu's connection and
# producer pools; logging), except one: ``cached_property`` (functools' on Python <
# 3.12, and kombu's on every version) guards every read with one lock per property,
# shared by all instances, and kombu reads connections, channels and producers
# through it on each publish. A child forked while the pass published would hang at
# its first publish. So the child gets fresh locks for them. (A fork that waited for
# the pass instead deadlocked: the embedded broker's fork handler runs first and
# holds the lock the pass needs to finish.)
_LIBRARIES = ("kombu", "celery", "amqp", "billiard", "vine", "redis", "celeryflow")
_properties: dict[str, list[functools.cached_property[Any]]] = {}  # by module, once
_threads_running = 0  # reconciler threads started in this process, not yet stopped


def _cached_properties() -> list[functools.cached_property[Any]]:
    """The cached properties of the classes of the libraries a pass goes through.
    Each module is looked at once (the thread does it in the parent before each pass,
    so a child only resets)."""
    for name, module in list(sys.modules.items()):
        if name in _properties or module is None:
            continue
        found: list[functools.cached_property[Any]] = []
        if name.partition(".")[0] in _LIBRARIES:
            for value in list(vars(module).values()):
                # type(), not isinstance(): celery's lazy proxies would import on a look
                if not issubclass(type(value), type) or value.__module__ != name:
                    continue
                found += [
                    attribute
                    for attribute in vars(value).values()
                    if isinstance(attribute, functools.cached_property)
                    and getattr(attribute, "lock", None) is not None
                ]
        _properties[name] = found
    return [p for found in _properties.values() for p in found]


def _reset_property_locks() -> None:
    if _threads_running:  # the parent had a reconciler thread: it may have held one
        for attribute in _cached_properties():
            attribute.lock = type(attribute.lock)()  # type: ignore[attr-defined]


os.register_at_fork(after_in_child=_reset_property_locks)


class Reconciler:
    def __init__(self, flow: Flow) -> None:
        self.flow = flow
        self.owner = secrets.token_hex(16)  # this reconciler, as holder of the prune lease
        self.host = f"{socket.gethostname()}:{os.getpid()}"
        # When the worker this reconciler runs in began consuming (its task consumer
        # started; None: beat, or not yet): see store/due.py, "Still in line".
        self.consuming_since: datetime | None = None

    def run_once(self) -> int:
        """One pass; returns how many doorbells it rang."""
        settings = self.flow.settings
        ended: list[dict[str, Any]] = []
        due = self.flow.store.take_due(
            utcnow(),
            lookahead=settings.reconcile_interval * 2,
            redeliver_after=settings.redeliver_after,
            consuming_since=self.consuming_since,
            ended=ended,
        )
        self.flow.hooks.cancelled(ended)  # no executor saw these cancels (hooks.py)
        by_kind: dict[tuple[datetime | None, bool], list[str]] = defaultdict(list)
        names: dict[str, str] = {}
        for run in due:
            by_kind[run.eta, run.recovered].append(run.id)
            names[run.id] = run.function_id
        for (eta, recovered), run_ids in by_kind.items():
            self.flow.doorbell.ring(run_ids, eta=eta, function_id=names, recovered=recovered)
        if due:
            log.debug("reconciler rang %d run(s)", len(due))
        slots = self._slots()
        # what `celeryflow doctor` reads to tell the reconciler is alive
        beat(self.flow.store, "reconciler", self.host, utcnow())
        self.prune()
        self.flow.hooks.emit(
            "reconciled",
            Reconciled(rung=len(due), recovered=sum(r.recovered for r in due), slots=slots),
        )
        return len(due) + slots

    def prune(self) -> Pruned | None:
        """The retention pass, if retention is on and this reconciler takes the
        store's prune lease; None otherwise."""
        settings = self.flow.settings
        if settings.retention is None:
            return None
        store, hold = self.flow.store, settings.prune_interval
        now = utcnow()
        if not take_lease(store, self.owner, now, hold):
            return None
        started = time.monotonic()
        held = [True]

        def keep_going() -> bool:
            if time.monotonic() - started > PRUNE_BUDGET:
                return False
            held[0] = renew_lease(store, self.owner, utcnow(), hold)
            return held[0]

        pruned = prune(
            store,
            now=now,
            older_than=settings.retention,
            dedup_window=settings.dedup_window,
            cron_floors=self.cron_floors(now),
            keep_going=keep_going,
        )
        if not pruned.complete and held[0]:
            release_lease(store, self.owner, utcnow())
        if pruned.total():  # housekeeping: DEBUG, as the rest of the reconciler's lines
            log.debug(
                "pruned %s", ", ".join(f"{n} {kind}" for kind, n in pruned.as_dict().items() if n)
            )
        return pruned

    def cron_floors(self, now: datetime) -> dict[str, datetime]:
        """Per cron function, the oldest slot any of its triggers could still fire:
        older ticks are history only."""
        return {
            fn.id: min(trigger.latest_slot(now - CRON_MARGIN) for trigger in fn.crons)
            for fn in list(self.flow.functions.values())
            if fn.crons
        }

    def _slots(self) -> int:
        """Runs parked for a concurrency slot are never due (so waiting floods no
        broker); ring the first in line wherever a slot is free."""
        rang = 0
        for function in list(self.flow.functions.values()):
            limits = [c.limit for c in function.control.concurrency]
            if limits:
                heads = self.flow.store.parked_for_slots(function.id, limits, utcnow())
                self.flow.doorbell.ring(heads, function_id=function.id)
                rang += len(heads)
        return rang


class CronClock:
    """Fires a process's due cron slots: each call looks only at slots newer than the
    last successful one, so a wake-up between slots does no query."""

    def __init__(self, flow: Flow) -> None:
        self.flow = flow
        self.since: datetime | None = None  # slots at or before this were handled here
        self.next_at: datetime | None = None  # None: look now

    def seconds_left(self, now: datetime) -> float | None:
        """Seconds until the next look (0: now), or None without cron functions."""
        if not self.flow.has_crons():
            return None
        if self.next_at is None:
            return 0.0
        left = (self.next_at - now).total_seconds()
        return max(0.0, min(left, self.flow.settings.tick_interval.total_seconds()))

    def fire(self, now: datetime) -> list[str]:
        """Fire the slots due at ``now``; returns the new run ids."""
        # if this fails (the store is down), look again at the reconciler's pace
        self.next_at = now + self.flow.settings.reconcile_interval
        created = self.flow.tick(now, since=self.since)
        self.since = now
        upcoming = [
            trigger.next_slot(now) for fn in self.flow.functions.values() for trigger in fn.crons
        ]
        self.next_at = min(upcoming, default=None)
        return created


class ReconcilerThread(threading.Thread):
    """Runs the reconciler every ``reconcile_interval`` inside a worker process, and
    fires cron slots as they come (see the module docstring)."""

    def __init__(self, flow: Flow) -> None:
        super().__init__(name="celeryflow-reconciler", daemon=True)
        self.reconciler = Reconciler(flow)
        self.cron = CronClock(flow)
        self.interval = flow.settings.reconcile_interval.total_seconds()
        self._next_pass = time.monotonic() + self.interval
        self._stop_event = threading.Event()

    def run(self) -> None:
        global _threads_running
        _threads_running += 1
        try:
            self._loop()
        finally:
            _threads_running -= 1

    def _loop(self) -> None:
        # A store error is one line per distinct error, and the loop backs off while it
        # lasts (up to 60 s between tries); any other error keeps its traceback.
        backoff, last = 0.0, None
        while not self._stop_event.wait(max(self._wait(), backoff)):
            try:
                self._due_work()
            except Exception as exc:  # the next pass retries; never kill the worker for this
                line = store_error_line(exc)
                if line is None:
                    log.exception("reconciler pass failed")
                elif line != last:
                    log.error("reconciler pass failed: %s (retrying with back-off)", line)
                last, backoff = line, min(max(backoff * 2, self.interval), 60.0)
            else:
                if last is not None:
                    log.warning("reconciler passes work again")
                backoff, last = 0.0, None

    def _wait(self) -> float:
        """Seconds until the next cron look or reconciler pass, whichever is first."""
        until_pass = max(0.0, self._next_pass - time.monotonic())
        cron = self.cron.seconds_left(utcnow())
        return until_pass if cron is None else min(until_pass, cron)

    def _due_work(self) -> None:
        _cached_properties()  # modules imported since the last pass, if any
        now = utcnow()
        if self.cron.seconds_left(now) == 0.0:
            self.cron.fire(now)
        if time.monotonic() >= self._next_pass:
            self._next_pass = time.monotonic() + self.interval
            self.reconciler.run_once()

    def stop(self) -> None:
        self._stop_event.set()
