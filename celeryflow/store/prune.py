"""Retention: removing what the store no longer needs, in short batches.

What goes, each kind in transactions of at most ``batch`` rows (so no lock is held
for long, and SQLite writers queue behind a batch for milliseconds):

* **runs** that ended (completed, failed, cancelled, skipped) before the cutoff, with
  their steps and waiter rows; never a run whose parent is still live (an invoke or
  a parallel parent reads its children) nor one with a live child (a branch replays
  its parent's memo). A queued, running, sleeping or waiting run is never touched.
* **waiter rows** of runs that ended (a run cancelled while waiting leaves them).
* **events** received before both the cutoff and the dedup window (the events table
  is the dedup ledger: an id still inside its window is never dropped) that no
  remaining run names as its event.
* **flow-control keys** whose state decides nothing any more: rate limit, throttle and
  idempotency rows past their time, singleton rows whose run ended, debounce and batch
  rows whose run no longer takes events, concurrency lock rows no live run uses. Each
  is taken ``FOR UPDATE SKIP LOCKED`` and checked again before it is deleted, so a
  decision being made on a key is never disturbed.
* **cron ticks** older than the cutoff of the functions the caller names, below the
  oldest slot any of the function's triggers could still fire (``cron_floors``), and
  never the newest tick of a function (after downtime, it is what makes the latest
  missed slot fire once).

``cf_wait_fields`` is kept: it has one row per (event name, match field) that some
waiter used, which is bounded by the code, not by traffic, and deleting one races with
a waiter being registered (the sender would no longer look that field up).

Only one process prunes at a time: the lease is a row of ``cf_flow_keys`` (function
``celeryflow``, scope ``lease``, key ``prune``; ``until`` is when it may be taken again,
``run_id`` the holder). Taking it sets ``until`` to now plus the prune interval, so
the whole store is pruned at most once per interval, however many workers run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ..flowcontrol.controls import ADMISSION_CONTROLS, Keep
from ..runs import TERMINAL, RunStatus
from .tables import cron_ticks, events, flow_keys, runs, steps, waits

if TYPE_CHECKING:
    from .store import Store

__all__ = ["BATCH", "LEASE", "Pruned", "prune", "release_lease", "renew_lease", "take_lease"]

BATCH = 500
ENDED = sorted(s.value for s in TERMINAL)
LEASE = {"function_id": "celeryflow", "scope": "lease", "key": "prune"}
KINDS = ("runs", "steps", "waits", "events", "flow_keys", "cron_ticks")

Progress = Callable[[str, int], None]
Batch = Callable[[], tuple[int, int]]  # one transaction: (rows found, rows deleted)


@dataclass
class Pruned:
    """Rows removed (or, in a dry run, that would be), by kind."""

    runs: int = 0
    steps: int = 0
    waits: int = 0
    events: int = 0
    flow_keys: int = 0
    cron_ticks: int = 0
    complete: bool = True  # False: stopped early (time budget, lease lost) with work left

    def total(self) -> int:
        return sum(getattr(self, kind) for kind in KINDS)

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name in KINDS}


@contextmanager
def _transaction(store: Store) -> Iterator[sa.Connection]:
    with store.write_lock(), store.engine.connect() as conn:
        if store.capabilities.read_committed_batches:
            # no gap locks on the ranges scanned, and each statement sees the newest
            # commits (as on PostgreSQL), so a re-check after locking is a real one
            conn.execution_options(isolation_level="READ COMMITTED")
        with conn.begin():
            yield conn


# -- the lease ----------------------------------------------------------------------------


def _lease_row() -> sa.ColumnElement[bool]:
    return sa.and_(*(flow_keys.c[name] == value for name, value in LEASE.items()))


def take_lease(store: Store, owner: str, now: datetime, hold: timedelta) -> bool:
    """Become the store's pruner until ``now + hold``, if nobody is (or was within
    the interval)."""
    with store.engine.connect() as conn:
        # a read first: every reconciler pass of every worker asks, few may take it
        until = conn.execute(sa.select(flow_keys.c.until).where(_lease_row())).scalar()
    if until is not None and until > now:
        return False
    with _transaction(store) as conn:
        free = sa.or_(flow_keys.c.until.is_(None), flow_keys.c.until <= now)
        taken = conn.execute(
            flow_keys.update().where(_lease_row(), free).values(run_id=owner, until=now + hold)
        ).rowcount
        if taken == 1:
            return True
        exists = conn.execute(sa.select(flow_keys.c.key).where(_lease_row())).first()
        if exists is not None:
            return False
        return store.insert_if_new(conn, flow_keys, {**LEASE, "run_id": owner, "until": now + hold})


def renew_lease(store: Store, owner: str, now: datetime, hold: timedelta) -> bool:
    """Extend a lease ``owner`` holds; False if it lost it."""
    with _transaction(store) as conn:
        renewed = conn.execute(
            flow_keys.update()
            .where(_lease_row(), flow_keys.c.run_id == owner)
            .values(until=now + hold)
        ).rowcount
    return bool(renewed == 1)


def release_lease(store: Store, owner: str, now: datetime) -> None:
    """Let the next pass (of any process) continue at once: work was left over."""
    with _transaction(store) as conn:
        conn.execute(
            flow_keys.update().where(_lease_row(), flow_keys.c.run_id == owner).values(until=now)
        )


# -- what may go ----------------------------------------------------------------------------


def _runs_prunable(cutoff: datetime) -> list[sa.ColumnElement[bool]]:
    parent = runs.alias("parent_run")
    child = runs.alias("child_run")
    return [
        runs.c.status.in_(ENDED),
        runs.c.created_at < cutoff,  # implied by the next; lets ix_cf_runs_status_created serve
        sa.func.coalesce(runs.c.ended_at, runs.c.created_at) < cutoff,
        ~sa.exists().where(parent.c.id == runs.c.parent_run_id, parent.c.status.not_in(ENDED)),
        ~sa.exists().where(child.c.parent_run_id == runs.c.id, child.c.status.not_in(ENDED)),
    ]


def _waits_dead() -> sa.ColumnElement[bool]:
    run = runs.alias("waiting_run")
    return ~sa.exists().where(run.c.id == waits.c.run_id, run.c.status.not_in(ENDED))


def _events_unused(cutoff: datetime) -> list[sa.ColumnElement[bool]]:
    return [
        events.c.received_at < cutoff,
        ~sa.exists().where(runs.c.event_id == events.c.id),
    ]


def _flow_keys_expired(now: datetime) -> sa.ColumnElement[bool]:
    holder = runs.alias("holder_run")
    fk = flow_keys.c
    live_holder = sa.exists().where(holder.c.id == fk.run_id, holder.c.status.not_in(ENDED))
    # a debounced or batched run takes events until its first claim (flowkeys._OPEN)
    open_holder = sa.exists().where(
        holder.c.id == fk.run_id, holder.c.status == RunStatus.QUEUED.value, holder.c.fence == 0
    )

    def slot_unused(column: sa.Column[Any]) -> sa.ColumnElement[bool]:
        return ~sa.exists().where(
            holder.c.function_id == fk.function_id,
            column == fk.key,
            holder.c.status.not_in(ENDED),
        )

    def scopes(keep: Keep) -> list[str]:
        return [control.scope for control in ADMISSION_CONTROLS if control.keeps is keep]

    return sa.or_(
        sa.and_(fk.scope.in_(scopes(Keep.UNTIL)), sa.or_(fk.until.is_(None), fk.until < now)),
        sa.and_(fk.scope.in_(scopes(Keep.RUN_UNFINISHED)), ~live_holder),
        sa.and_(fk.scope.in_(scopes(Keep.RUN_OPEN)), ~open_holder),
        sa.and_(fk.scope == "concurrency1", slot_unused(holder.c.concurrency_key1)),
        sa.and_(fk.scope == "concurrency2", slot_unused(holder.c.concurrency_key2)),
    )


def _newest_tick(store: Store, function_id: str) -> datetime | None:
    with store.engine.connect() as conn:
        newest: datetime | None = conn.execute(
            sa.select(sa.func.max(cron_ticks.c.scheduled_at)).where(
                cron_ticks.c.function_id == function_id
            )
        ).scalar()
    return newest


def _ticks_old(
    function_id: str, floor: datetime, newest: datetime, cutoff: datetime
) -> list[sa.ColumnElement[bool]]:
    # ``newest`` is read beforehand: MySQL refuses a DELETE reading its own table
    return [
        cron_ticks.c.function_id == function_id,
        cron_ticks.c.scheduled_at < min(floor, newest),
        cron_ticks.c.fired_at < cutoff,
    ]


# -- batches ------------------------------------------------------------------------------


def _lock(
    conn: sa.Connection, table: sa.Table, keys: Sequence[tuple[Any, ...]]
) -> list[tuple[Any, ...]]:
    """The rows of ``keys`` nobody else holds, now locked by this transaction."""
    if not keys:
        return list(keys)
    pk = list(table.primary_key.columns)
    query = sa.select(*pk).where(sa.tuple_(*pk).in_(keys)).with_for_update(skip_locked=True)
    return [tuple(row) for row in conn.execute(query)]


def _runs_batch(store: Store, cutoff: datetime, batch: int) -> tuple[int, Pruned]:
    with _transaction(store) as conn:
        found = list(
            conn.execute(sa.select(runs.c.id).where(*_runs_prunable(cutoff)).limit(batch)).scalars()
        )
        if not found:
            return 0, Pruned()
        # An ended run never becomes live again and nothing writes it any more (a
        # stale executor's writes are fenced off): no lock or re-check needed.
        done = Pruned(
            steps=conn.execute(steps.delete().where(steps.c.run_id.in_(found))).rowcount,
            waits=conn.execute(waits.delete().where(waits.c.run_id.in_(found))).rowcount,
            runs=conn.execute(runs.delete().where(runs.c.id.in_(found))).rowcount,
        )
        return len(found), done


def _keyed_batch(
    store: Store,
    table: sa.Table,
    where: list[sa.ColumnElement[bool]],
    batch: int,
    *,
    lock: bool = False,
    order_by: Any = None,
) -> tuple[int, int]:
    """Delete up to ``batch`` rows of ``table`` matching ``where``; with ``lock``,
    only rows nobody holds, checked again once locked. Returns (found, deleted)."""
    pk = list(table.primary_key.columns)
    with _transaction(store) as conn:
        query = sa.select(*pk).where(*where).limit(batch)
        if order_by is not None:
            query = query.order_by(order_by)
        found = [tuple(row) for row in conn.execute(query)]
        # SQLite, without SKIP LOCKED, has one writer: already us
        keys = _lock(conn, table, found) if lock and store.capabilities.skip_locked else found
        if not keys:
            return len(found), 0
        deleted = conn.execute(table.delete().where(sa.tuple_(*pk).in_(keys), *where)).rowcount
        return len(found), int(deleted)


def _count(store: Store, query: sa.Select[Any]) -> int:
    with store.engine.connect() as conn:
        return int(
            conn.execute(sa.select(sa.func.count()).select_from(query.subquery())).scalar() or 0
        )


def _dry_run(
    store: Store,
    now: datetime,
    run_cutoff: datetime,
    event_cutoff: datetime,
    cron_floors: dict[str, datetime],
) -> Pruned:
    prunable = sa.select(runs.c.id).where(*_runs_prunable(run_cutoff))
    kept = runs.alias("kept_run")
    kept_refers = sa.exists().where(
        kept.c.event_id == events.c.id, kept.c.id.not_in(prunable.scalar_subquery())
    )
    ticks = 0
    for function_id, floor in cron_floors.items():
        newest = _newest_tick(store, function_id)
        if newest is not None:
            where = _ticks_old(function_id, floor, newest, run_cutoff)
            ticks += _count(store, sa.select(cron_ticks.c.function_id).where(*where))
    return Pruned(
        runs=_count(store, prunable),
        steps=_count(store, sa.select(steps.c.run_id).where(steps.c.run_id.in_(prunable))),
        waits=_count(
            store,
            sa.select(waits.c.run_id).where(sa.or_(_waits_dead(), waits.c.run_id.in_(prunable))),
        ),
        events=_count(
            store,
            sa.select(events.c.id).where(events.c.received_at < event_cutoff, ~kept_refers),
        ),
        flow_keys=_count(store, sa.select(flow_keys.c.key).where(_flow_keys_expired(now))),
        cron_ticks=ticks,
    )


def prune(
    store: Store,
    *,
    now: datetime,
    older_than: timedelta,
    dedup_window: timedelta,
    cron_floors: dict[str, datetime] | None = None,
    batch: int = BATCH,
    dry_run: bool = False,
    keep_going: Callable[[], bool] = lambda: True,
    progress: Progress | None = None,
) -> Pruned:
    """Remove what ended or expired before ``now - older_than`` (events also only past
    ``dedup_window``), ``batch`` rows per transaction; ``keep_going()`` is asked before
    each batch (a time budget, the lease still held). ``dry_run`` counts instead.
    ``cron_floors``: per function, the oldest slot its triggers could still fire;
    the ticks of functions not named are kept."""
    run_cutoff = now - older_than
    event_cutoff = now - max(older_than, dedup_window)
    floors = cron_floors or {}
    if dry_run:
        return _dry_run(store, now, run_cutoff, event_cutoff, floors)
    total = Pruned()

    def add(kind: str, count: int) -> None:
        setattr(total, kind, getattr(total, kind) + count)
        if progress is not None and count:
            progress(kind, count)

    def runs_batch() -> tuple[int, int]:
        found, done = _runs_batch(store, run_cutoff, batch)
        add("steps", done.steps)
        add("waits", done.waits)
        return found, done.runs

    def keyed(table: sa.Table, where: list[Any], **options: Any) -> Batch:
        return lambda: _keyed_batch(store, table, where, batch, **options)

    passes: list[tuple[str, Batch]] = [
        ("runs", runs_batch),
        ("waits", keyed(waits, [_waits_dead()])),
        ("events", keyed(events, _events_unused(event_cutoff), order_by=events.c.received_at)),
        ("flow_keys", keyed(flow_keys, [_flow_keys_expired(now)], lock=True)),
    ]
    for function_id, floor in floors.items():
        newest = _newest_tick(store, function_id)
        if newest is not None:
            ticks = _ticks_old(function_id, floor, newest, run_cutoff)
            passes.append(("cron_ticks", keyed(cron_ticks, ticks)))
    for kind, one_batch in passes:
        # batches until one finds fewer than ``batch`` rows, or could take none
        while True:
            if not keep_going():
                total.complete = False
                return total
            found, deleted = one_batch()
            add(kind, deleted)
            if found < batch or deleted == 0:
                break
    return total
