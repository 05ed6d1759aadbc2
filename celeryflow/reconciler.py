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
        by_kind: dict[tuple[datetime | None, bool], list[str]] = defaultdict(list)
        for run in due:
            by_kind[run.eta, run.recovered].append(run.id)
        for (eta, recovered), run_ids in by_kind.items():
            self.flow.doorbell.ring(run_ids, eta=eta, recovered=recovered)
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
        while not self._stop_event.wait(self.interval):
            try:
                self.reconciler.run_once()
            except Exception:  # the next pass retries; never kill the worker for this
                log.exception("reconciler pass failed")

    def stop(self) -> None:
        self._stop_event.set()
