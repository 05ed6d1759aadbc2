"""The reconciler's due pass: which overdue runs to ring, and when to look again.

A run is rung when its ``due_at`` has passed. The look-ahead (twice the reconcile
interval) only lets a sleeper whose wake time comes before the next pass be rung now
with an ETA; any other run it reaches early is left alone until it is due (a queued
run is due ``redeliver_after`` after its doorbell, not that minus the look-ahead).
Three kinds of overdue run, three rules:

* **Recovered** — ``running`` with a lapsed lease: its executor died. Rung by the
  first pass after the lease's end (not before: a ring that finds the lease held is
  dropped), flagged ``recovered`` so the doorbell
  puts it on the recovery queue, ahead of the backlog (README "How it works"). Rung
  again a ``redeliver_after`` later, it goes to the flow's queue: a recovery queue
  that no worker consumes delays a recovery, never loses it.
* **Still in line** — queued since it was created, never started, while the workers
  are busy with runs created before it (the newest run ever claimed is not newer than
  it, and a run executes now, or that newest one started within ``redeliver_after``,
  or the worker whose reconciler this is began consuming within ``redeliver_after``).
  Broker queues are FIFO, so the doorbell sent at its creation is still ahead of them
  in the queue: ringing again would only add a duplicate to the backlog. Not rung;
  looked at again after ``redeliver_after``. This holds for a run rung before too (a
  pass that ran before any worker claimed anything): its first doorbell is still in
  line. Once it has waited ``REDELIVER_BACKOFF_CAP`` x ``redeliver_after`` it is rung
  anyway, which bounds the delay of a doorbell really lost while the queue is busy.
* **Anything else due** (a lost doorbell, a wake-up) — rung; the next look is
  ``redeliver_after`` x 2^(times rung), capped at ``REDELIVER_BACKOFF_CAP`` x, so a run
  that a slow broker holds for long is not rung every ``redeliver_after`` either.
  "Times rung" is ``dispatches``, every ring of the run's life: a run woken often
  backs off sooner, never beyond the cap.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from ..runs import RunStatus
from .session import never_started
from .tables import runs
from .waits import cancel_run, report_cancelled

__all__ = ["REDELIVER_BACKOFF_CAP", "DueRun", "redeliver_interval", "take_due"]

S = RunStatus
REDELIVER_BACKOFF_CAP = 8  # x redeliver_after: 4 min with the default 30 s
PARKED = (S.SLEEPING.value, S.QUEUED.value, S.WAITING.value)
# statuses a run reaches only by being claimed (the index on (status, created_at)
# answers the newest of each with one lookup)
CLAIMED = (S.RUNNING.value, S.SLEEPING.value, S.WAITING.value, S.COMPLETED.value, S.FAILED.value)


@dataclass
class DueRun:
    id: str
    eta: datetime | None  # ring at this time (a sleeper within the look-ahead), else now
    function_id: str = ""  # names the doorbell message (Celery's shadow name)
    recovered: bool = False  # its executor's lease lapsed: ring on the recovery queue


def redeliver_interval(redeliver_after: timedelta, rung: int) -> timedelta:
    """How long after its ``rung``-th re-ring the reconciler looks at a run again."""
    return redeliver_after * min(1 << min(max(rung, 0), 16), REDELIVER_BACKOFF_CAP)


def _past_deadline(row: Any, now: datetime) -> bool:
    """Timeouts(start=, finish=): never started by its start deadline, or not ended
    by its finish deadline."""
    if row.start_deadline is not None and never_started(row) and row.start_deadline < now:
        return True
    return row.finish_deadline is not None and row.finish_deadline < now


def _next_deadline(row: Any, now: datetime) -> datetime | None:
    pending = [
        d
        for d in (
            row.start_deadline if never_started(row) else None,
            row.finish_deadline,
        )
        if d is not None and d >= now
    ]
    return min(pending) if pending else None


def _lease_held(row: Any, now: datetime) -> bool:
    return row.lease_expires_at is not None and bool(row.lease_expires_at > now)


def _in_line_since_creation(row: Any) -> bool:
    # Queued since it was created, so the doorbell sent then is in line in the broker
    # (a retry or a slot wait puts a run back with a wake time or a start). A ring
    # since then does not matter: that doorbell is behind the first one.
    return bool(row.status == S.QUEUED.value and never_started(row) and row.wake_at is None)


class _Line:
    """Where the workers are in the line of never-started runs, read once a pass and
    only if some due run needs it."""

    def __init__(self, conn: sa.Connection, consuming_since: datetime | None) -> None:
        self.conn = conn
        self.consuming_since = consuming_since
        self._read = False
        self.newest_claimed: datetime | None = None
        self.busy = False

    def _look(self, now: datetime, redeliver_after: timedelta) -> None:
        """The creation time of the newest run ever claimed, and whether the workers
        are moving: a run executes now, or one of the newest claimed started recently
        (all of the newest: a send() of many events creates them at one instant), or
        this reconciler's own worker began consuming recently (it reaches the backlog
        that was there before it, and nothing may be claimed yet: a pass that came
        first used to take that for "no worker is up" and ring the whole backlog).
        Each lookup is one step down the ``(status, created_at)`` index."""
        since = self.consuming_since
        self.busy = since is not None and since >= now - redeliver_after
        newest = [
            sa.select(runs.c.created_at)
            .where(runs.c.status == status)
            .order_by(runs.c.created_at.desc())
            .limit(1)
            .scalar_subquery()
            for status in CLAIMED
        ]
        values = self.conn.execute(sa.select(*newest)).one()
        found = [v for v in values if v is not None]
        if not found:
            return
        self.newest_claimed = max(found)
        running = values[0] is not None
        statuses = [s for s, v in zip(CLAIMED, values, strict=True) if v == self.newest_claimed]
        started = self.conn.execute(
            sa.select(sa.func.max(runs.c.started_at)).where(
                sa.or_(*(runs.c.status == s for s in statuses)),
                runs.c.created_at == self.newest_claimed,
            )
        ).scalar()
        self.busy = (
            self.busy or running or (started is not None and started >= now - redeliver_after)
        )

    def holds(self, row: Any, now: datetime, redeliver_after: timedelta) -> bool:
        """Whether ``row``'s doorbell is presumably still in the broker queue."""
        if not _in_line_since_creation(row):
            return False
        if now - row.created_at >= redeliver_after * REDELIVER_BACKOFF_CAP:
            return False
        if not self._read:
            self._read = True
            self._look(now, redeliver_after)
        if not self.busy:
            return False  # nothing moves: the doorbell was lost, or no worker is up
        return self.newest_claimed is None or self.newest_claimed <= row.created_at


def take_due(
    conn: sa.Connection,
    now: datetime,
    lookahead: timedelta,
    redeliver_after: timedelta,
    *,
    limit: int,
    skip_locked: bool,
    cancelled: list[str] | None = None,
    consuming_since: datetime | None = None,
    ended: list[str] | None = None,
) -> list[DueRun]:
    """Runs whose next move is due (or, for sleepers, due within ``lookahead``), in
    ``conn``'s transaction: each gets its next due time (so other reconcilers skip
    it meanwhile), and ``dispatches`` counts the rings. Runs past their Timeouts are
    cancelled here (their ids appended to ``cancelled``). ``consuming_since``: when the
    worker this reconciler runs in began consuming the flow's queues (None: beat).
    ``ended`` gets the cancelled runs whose end no one told the hooks yet
    (``cancel_run``), this pass's Timeouts included: the caller tells them."""
    told: list[str] = []
    horizon = now + lookahead
    query = (
        sa.select(
            runs.c.id,
            runs.c.function_id,
            runs.c.status,
            runs.c.wake_at,
            runs.c.due_at,
            runs.c.dispatches,
            runs.c.lease_expires_at,
            runs.c.created_at,
            runs.c.started_at,
            runs.c.start_deadline,
            runs.c.finish_deadline,
        )
        .where(runs.c.due_at <= horizon)
        .order_by(runs.c.due_at)
        .limit(limit)
    )
    if skip_locked:
        query = query.with_for_update(skip_locked=True)
    line = _Line(conn, consuming_since)
    due: list[DueRun] = []
    updates: list[dict[str, Any]] = []
    expired: list[str] = []
    for row in conn.execute(query).all():
        if row.status == S.CANCELLED.value:
            if row.due_at <= now:  # cancelled, its end not told yet (cancel_run)
                told.append(row.id)
                updates.append({"rid": row.id, "next_due": None, "rung": 0})
            continue
        if _past_deadline(row, now):
            expired.append(row.id)
            continue
        wake = row.wake_at
        rung = 1
        next_due: datetime | None
        if row.status in PARKED and wake and wake > now:
            if wake <= horizon:  # wakes before the next pass: ring with an ETA
                due.append(DueRun(row.id, wake, row.function_id))
                next_due = wake + redeliver_after
            else:  # here for a deadline only; nothing to ring yet
                next_due, rung = wake, 0
        elif row.status == S.RUNNING.value and _lease_held(row, now):
            # taken by the look-ahead while its executor may still renew: a ring now
            # would find the lease held, so the next pass looks again
            next_due, rung = row.lease_expires_at, 0
        elif row.due_at > now:
            continue  # reached by the look-ahead only: not due yet, left as it is
        elif row.status == S.RUNNING.value:
            # The recovery queue first; still not resumed a redeliver_after later (no
            # worker consumes that queue: a -Q or routing mistake), the flow's queue.
            lapsed_for = now - (row.lease_expires_at or now)
            recovered = lapsed_for < redeliver_after
            due.append(DueRun(row.id, None, row.function_id, recovered=recovered))
            next_due = now + redeliver_after
        elif row.status in PARKED and line.holds(row, now, redeliver_after):
            next_due, rung = now + redeliver_after, 0
        elif row.status in PARKED:
            due.append(DueRun(row.id, None, row.function_id))
            next_due = now + redeliver_interval(redeliver_after, row.dispatches)
        else:
            next_due, rung = None, 0
        deadline = _next_deadline(row, now)
        if next_due is not None and deadline is not None:
            next_due = min(next_due, deadline)
        updates.append({"rid": row.id, "next_due": next_due, "rung": rung})
    if updates:
        conn.execute(
            runs.update()
            .where(runs.c.id == sa.bindparam("rid"))
            .values(
                due_at=sa.bindparam("next_due"),
                dispatches=runs.c.dispatches + sa.bindparam("rung", type_=sa.Integer),
            ),
            updates,
        )
    for run_id in expired:  # Timeouts: a parked run is cancelled here, on time
        if cancel_run(conn, run_id, now) and cancelled is not None:
            cancelled.append(run_id)
    told += report_cancelled(conn, expired)
    if ended is not None:
        ended += told
    return due
