"""The reconciler: rings the doorbell again for runs whose next move is overdue.

The store is the truth and the broker is only the doorbell: a lost message, a
worker killed mid-step or a long sleep are all the same case here — a run whose
``due_at`` has passed. It runs as a beat entry and as a thread in each worker;
several at once are harmless (the lease lets one executor through).
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from datetime import datetime
from typing import TYPE_CHECKING

from .durations import utcnow
from .store.database import store_error_line

if TYPE_CHECKING:
    from .flow import Flow

__all__ = ["Reconciler", "ReconcilerThread"]

log = logging.getLogger("celeryflow.reconciler")


class Reconciler:
    def __init__(self, flow: Flow) -> None:
        self.flow = flow

    def run_once(self) -> int:
        """One pass; returns how many doorbells it rang."""
        settings = self.flow.settings
        due = self.flow.store.take_due(
            utcnow(),
            lookahead=settings.reconcile_interval * 2,
            redeliver_after=settings.redeliver_after,
        )
        by_eta: dict[datetime | None, list[str]] = defaultdict(list)
        for run in due:
            by_eta[run.eta].append(run.id)
        for eta, run_ids in by_eta.items():
            self.flow.doorbell.ring(run_ids, eta=eta)
        if due:
            log.info("reconciler rang %d run(s)", len(due))
        return len(due) + self._slots()

    def _slots(self) -> int:
        """Runs parked for a concurrency slot are never due (so waiting floods no
        broker); ring the first in line wherever a slot is free."""
        rang = 0
        for function in list(self.flow.functions.values()):
            limits = [c.limit for c in function.control.concurrency]
            if limits:
                heads = self.flow.store.parked_for_slots(function.id, limits, utcnow())
                self.flow.doorbell.ring(heads)
                rang += len(heads)
        return rang


class ReconcilerThread(threading.Thread):
    """Runs the reconciler every ``reconcile_interval`` inside a worker process."""

    def __init__(self, flow: Flow) -> None:
        super().__init__(name="celeryflow-reconciler", daemon=True)
        self.reconciler = Reconciler(flow)
        self.interval = flow.settings.reconcile_interval.total_seconds()
        self._stop_event = threading.Event()

    def run(self) -> None:
        # A store error is one line per distinct error, and passes back off while it
        # lasts (up to 60 s apart); any other error keeps its traceback.
        delay, last = self.interval, None
        while not self._stop_event.wait(delay):
            try:
                self.reconciler.run_once()
            except Exception as exc:  # the next pass retries; never kill the worker for this
                line = store_error_line(exc)
                if line is None:
                    log.exception("reconciler pass failed")
                elif line != last:
                    log.error("reconciler pass failed: %s (retrying with back-off)", line)
                last, delay = line, max(self.interval, min(delay * 2, 60.0))
            else:
                if last is not None:
                    log.warning("reconciler passes work again")
                delay, last = self.interval, None

    def stop(self) -> None:
        self._stop_event.set()
