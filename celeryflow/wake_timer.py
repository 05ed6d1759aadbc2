"""Wake-ups a worker process keeps in memory until they are due.

A run that parks for a short sleep (or a retry's back-off) needs its doorbell rung
at its wake time. Published at once with an ETA, that doorbell is a second message
per sleeper that the worker's main process must receive, record as unacked and hold
for the whole sleep: on Redis, half of what a sleeper costs the worker while the
others are still being sent. Held here instead, it is published when due, as an
ordinary doorbell, from the process that parked the run.

Nothing is lost by holding it: the run's wake time is committed in the store before
it is held, and what this process holds when it exits cleanly (a prefork child
replaced after ``--max-tasks-per-child``, a warm shutdown) is published then, with
its ETA, as it would have been before. A process killed outright loses what it
held; the reconciler rings those runs, as it rings the runs of an ETA message the
broker keeps unacked for its visibility timeout (an hour on Redis). Where the broker
hands a dead worker's messages to another at once (AMQP), tasks.py does not hold.
"""

from __future__ import annotations

import heapq
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime

from .durations import utcnow

__all__ = ["Ring", "WakeTimer"]

log = logging.getLogger("celeryflow.wakes")

# ring(run_ids, eta, function ids by run id): eta None rings now
Ring = Callable[[list[str], datetime | None, dict[str, str]], None]


class WakeTimer:
    """The wake-ups held by this process, rung by one daemon thread as they come due.

    Per process: a fork (a prefork pool child) starts with nothing held and no
    thread; the thread starts at the first ``hold``."""

    def __init__(self, ring: Ring) -> None:
        self._ring = ring
        self._pid = -1
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._cond = threading.Condition()
        self._held: list[tuple[datetime, int, str, str | None]] = []
        self._count = 0
        self._thread: threading.Thread | None = None
        self._closed = False

    def hold(self, run_ids: Sequence[str], at: datetime, function_ids: Mapping[str, str]) -> bool:
        """Hold ``run_ids`` until ``at``. False once :meth:`close` ran and before
        :meth:`reopen`: the caller publishes them with their ETA."""
        if self._pid != os.getpid():
            self._reset()
        with self._cond:
            if self._closed:
                return False
            for run_id in run_ids:
                self._count += 1
                entry = (at, self._count, run_id, function_ids.get(run_id))
                heapq.heappush(self._held, entry)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="celeryflow-wakes", daemon=True
                )
                self._thread.start()
            self._cond.notify()
        return True

    def held(self) -> int:
        """How many wake-ups this process holds."""
        if self._pid != os.getpid():
            return 0
        with self._cond:
            return len(self._held)

    def reopen(self) -> None:
        """Hold again after a :meth:`close` (a worker started again in this process)."""
        if self._closed and self._pid == os.getpid():
            with self._cond:
                self._closed = False

    def close(self) -> None:
        """Stop holding and publish what is held, each with its ETA: this process is
        about to exit, and the broker keeps them from now on."""
        if self._pid != os.getpid():
            return  # a fork's copy: what it lists is the parent's
        with self._cond:
            self._closed = True
            held, self._held = sorted(self._held), []
            self._cond.notify_all()
        for at, _, run_id, function_id in held:
            self._ring_safely([run_id], at, {run_id: function_id} if function_id else {})
        if held:
            log.debug("%d held wake-up(s) handed to the broker with their ETA", len(held))

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    if not self._held:
                        self._cond.wait()
                        continue
                    wait = (self._held[0][0] - utcnow()).total_seconds()
                    if wait <= 0:
                        break
                    self._cond.wait(wait)
                if self._closed:
                    self._thread = None
                    return
                now = utcnow()
                due: list[tuple[datetime, int, str, str | None]] = []
                while self._held and self._held[0][0] <= now:
                    due.append(heapq.heappop(self._held))
            names = {run_id: fid for _, _, run_id, fid in due if fid}
            self._ring_safely([run_id for _, _, run_id, _ in due], None, names)

    def _ring_safely(self, run_ids: list[str], eta: datetime | None, names: dict[str, str]) -> None:
        # The ring logs a broker that is down (the reconciler rings these runs then);
        # anything else must not end the thread that rings every later wake-up.
        try:
            self._ring(run_ids, eta, names)
        except Exception:
            log.exception(
                "ringing %d held wake-up(s) failed; the reconciler rings them", len(run_ids)
            )
