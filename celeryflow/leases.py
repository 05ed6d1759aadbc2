"""Keeps the leases of the runs this process executes alive while their steps work.

One daemon thread per process (started lazily, so prefork children get their own)
renews every held lease each third of the lease time; steps themselves never pay
for it.
"""

from __future__ import annotations

import logging
import os
import threading
from datetime import timedelta

from .durations import utcnow
from .infra import is_infrastructure
from .store import Store

__all__ = ["LeaseKeeper"]

log = logging.getLogger("celeryflow.leases")


class LeaseKeeper:
    def __init__(self, store: Store, lease: timedelta) -> None:
        self.store = store
        self.lease = lease
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pid = 0
        self._thread: threading.Thread | None = None

    def hold(self, run_id: str, fence: int) -> None:
        with self._lock:
            self._held[run_id] = fence
            if self._pid != os.getpid() or self._thread is None or not self._thread.is_alive():
                self._pid = os.getpid()
                self._held = {run_id: fence}
                self._thread = threading.Thread(
                    target=self._loop, name="celeryflow-leases", daemon=True
                )
                self._thread.start()

    def release(self, run_id: str) -> None:
        with self._lock:
            self._held.pop(run_id, None)

    def _loop(self) -> None:
        interval = self.lease.total_seconds() / 3
        while not self._wake.wait(interval):
            with self._lock:
                held = list(self._held.items())
            if not held:
                continue
            try:
                lost = self.store.renew_leases(held, utcnow() + self.lease)
            except Exception as exc:  # a failed renewal is retried next round; the lease is long
                if is_infrastructure(exc):  # the store is down: one line, not a traceback
                    log.warning("renewing %d run leases failed: %s", len(held), exc)
                else:
                    log.exception("renewing %d run leases failed", len(held))
                continue
            with self._lock:
                # a run released meanwhile (it finished or parked) is not lost
                lost = [r for r in lost if self._held.get(r) == dict(held).get(r)]
            for run_id in lost:
                log.warning("run %s: lease lost (cancelled or taken over)", run_id)
