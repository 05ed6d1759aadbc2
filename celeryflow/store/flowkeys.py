"""Flow control in the store: every decision is made inside the transaction that
records the event (admission) or claims the run (concurrency slots), on a row of
``cf_flow_keys`` locked for the (function, control, key value), so the limits hold
across every worker process and machine sharing the store.

Throttle and rate limit use GCRA, as Inngest does: ``until`` holds the theoretical
arrival time; each admitted run moves it one emission interval (period / limit).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from ..codec import from_json, to_json
from ..flowcontrol import SHARED, Admission
from ..runs import TERMINAL, RunStatus
from .tables import flow_keys, runs
from .waits import cancel_run

__all__ = ["Admitted", "admit", "slot_heads", "slot_waiting_keys", "take_slot"]

S = RunStatus
SLOT_COLUMNS = (runs.c.concurrency_key1, runs.c.concurrency_key2)
SHARED_OWNER = ""  # the function id of a shared concurrency key's lock row


def _slot(function_id: str, column: sa.Column[Any], key: str) -> tuple[str, list[Any]]:
    """The lock row's function id and the runs counted for one concurrency key: the
    function's own, or, for a shared key (Concurrency(scope="shared")), every
    function's with that key."""
    if key.startswith(SHARED):
        return SHARED_OWNER, [column == key]
    return function_id, [runs.c.function_id == function_id, column == key]


@dataclass
class Admitted:
    """What flow control made of a planned run: the row to insert (perhaps as
    ``skipped``), or None when the event joined a debounced or batched run; and runs
    to ring now (a batch that filled up)."""

    row: dict[str, Any] | None
    ring: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)  # by Singleton(mode="cancel")


def _locked(
    conn: sa.Connection, insert_ignore: Any, function_id: str, scope: str, key: str
) -> sa.RowMapping:
    where = sa.and_(
        flow_keys.c.function_id == function_id, flow_keys.c.scope == scope, flow_keys.c.key == key
    )
    query = sa.select(flow_keys).where(where).with_for_update()
    row = conn.execute(query).mappings().first()
    if row is None:
        conn.execute(insert_ignore, {"function_id": function_id, "scope": scope, "key": key})
        row = conn.execute(query).mappings().one()
    return row


def _set(conn: sa.Connection, row: sa.RowMapping, **values: Any) -> None:
    conn.execute(
        flow_keys.update()
        .where(
            flow_keys.c.function_id == row["function_id"],
            flow_keys.c.scope == row["scope"],
            flow_keys.c.key == row["key"],
        )
        .values(**values)
    )


def _skip(row: dict[str, Any], now: datetime, reason: str, message: str) -> Admitted:
    error = {"type": "Skipped", "reason": reason, "message": message}
    row.update(
        status=S.SKIPPED.value, error=json.dumps(error), ended_at=now, due_at=None, wake_at=None
    )
    return Admitted(row)


def _start_at(row: dict[str, Any], when: datetime, redeliver_after: timedelta) -> None:
    row["wake_at"] = when
    row["due_at"] = when + redeliver_after


def admit(
    conn: sa.Connection,
    insert_ignore: Any,
    row: dict[str, Any],
    admission: Admission,
    now: datetime,
    redeliver_after: timedelta,
) -> Admitted:
    """Apply ``admission`` to the planned run ``row``, in the recording transaction.
    Order: rate limit, idempotency, singleton, debounce or batch, throttle."""
    cancelled: list[str] = []
    admitted = _admit(conn, insert_ignore, row, admission, now, redeliver_after, cancelled)
    admitted.cancelled.extend(cancelled)
    return admitted


def _admit(
    conn: sa.Connection,
    insert_ignore: Any,
    row: dict[str, Any],
    admission: Admission,
    now: datetime,
    redeliver_after: timedelta,
    cancelled: list[str],
) -> Admitted:
    if admission.refused:  # the row is already the skipped record of a failed key
        return Admitted(row)
    fn = row["function_id"]

    def lock(scope: str, key: str) -> sa.RowMapping:
        return _locked(conn, insert_ignore, fn, scope, key)

    if admission.rate_limit is not None:
        limit, key = admission.rate_limit
        k = lock("rate_limit", key)
        interval = limit.period / limit.limit
        tat = max(k["until"] or now, now)
        if tat - now > limit.period - interval:
            return _skip(row, now, "rate_limit", f"rate limit of {limit.limit} per {limit.period}")
        _set(conn, k, until=tat + interval)
    if admission.idempotency is not None:
        k = lock("idempotency", admission.idempotency)
        if k["until"] is not None and k["until"] > now:
            return _skip(row, now, "idempotency", f"run {k['run_id']} has the same key")
        _set(conn, k, run_id=row["id"], until=now + timedelta(hours=24))
    if admission.singleton is not None:
        singleton, key = admission.singleton
        k = lock("singleton", key)
        holder = k["run_id"]
        if holder is not None and _unfinished(conn, holder):
            if singleton.mode == "skip":
                return _skip(row, now, "singleton", f"run {holder} is still in flight")
            if cancel_run(conn, holder, now):
                cancelled.append(holder)
        _set(conn, k, run_id=row["id"], since=now)
    if admission.debounce is not None:
        debounce, key = admission.debounce
        k = lock("debounce", key)
        wake = now + debounce.period
        if k["run_id"] is not None:
            if debounce.timeout is not None and k["since"] is not None:
                wake = min(wake, k["since"] + debounce.timeout)
            if _reopen(conn, k["run_id"], row, wake, redeliver_after):
                return Admitted(None)
        _start_at(row, wake, redeliver_after)
        _set(conn, k, run_id=row["id"], since=now)
    if admission.batch is not None:
        batch, key = admission.batch
        k = lock("batch", key)
        if k["run_id"] is not None:
            joined = _join_batch(conn, k["run_id"], row, batch.max_size, now, redeliver_after)
            if joined is not None:
                if joined:
                    _set(conn, k, run_id=None)
                    return Admitted(None, [k["run_id"]])
                return Admitted(None)
        if batch.max_size > 1:
            _start_at(row, now + batch.timeout, redeliver_after)
            _set(conn, k, run_id=row["id"], since=now)
    if admission.throttle is not None:
        throttle, key = admission.throttle
        k = lock("throttle", key)
        interval = throttle.period / throttle.limit
        tat = max(k["until"] or now, now)
        start = max(now, tat - interval * (throttle.burst - 1))
        _set(conn, k, until=tat + interval)
        if start > now and (row.get("wake_at") is None or row["wake_at"] < start):
            _start_at(row, start, redeliver_after)
    return Admitted(row)


def _unfinished(conn: sa.Connection, run_id: str) -> bool:
    status = conn.execute(sa.select(runs.c.status).where(runs.c.id == run_id)).scalar()
    return status is not None and RunStatus(status) not in TERMINAL


# a debounced or batched run takes events until its first claim
_OPEN = (runs.c.status == S.QUEUED.value, runs.c.fence == 0)


def _reopen(
    conn: sa.Connection,
    run_id: str,
    row: dict[str, Any],
    wake: datetime,
    redeliver_after: timedelta,
) -> bool:
    """Debounce: give the waiting run the newest event and push its start back."""
    moved = conn.execute(
        runs.update()
        .where(runs.c.id == run_id, *_OPEN)
        .values(
            events=row["events"],
            event_id=row["event_id"],
            wake_at=wake,
            due_at=wake + redeliver_after,
        )
    ).rowcount
    return bool(moved == 1)


def _join_batch(
    conn: sa.Connection,
    run_id: str,
    row: dict[str, Any],
    max_size: int,
    now: datetime,
    redeliver_after: timedelta,
) -> bool | None:
    """Add the event to the open batch run: None if it is no longer open, else
    whether the batch is now full (and starts at once)."""
    current = conn.execute(
        sa.select(runs.c.events).where(runs.c.id == run_id, *_OPEN).with_for_update()
    ).scalar()
    if current is None:
        return None
    events = from_json(current) + from_json(row["events"])
    values: dict[str, Any] = {"events": to_json(events, "batch events")}
    full = len(events) >= max_size
    if full:
        values.update(wake_at=None, due_at=now + redeliver_after)
    conn.execute(runs.update().where(runs.c.id == run_id).values(**values))
    return full


# -- concurrency slots ------------------------------------------------------------------


def _counted(where: list[Any], at_most: int) -> sa.ScalarSelect[int]:
    """How many runs match, counting no further than ``at_most`` (a subquery)."""
    inner = sa.select(runs.c.id).where(*where).limit(at_most).subquery()
    return sa.select(sa.func.count()).select_from(inner).scalar_subquery()


def _count(conn: sa.Connection, where: list[Any], at_most: int) -> int:
    """How many runs match, counting no further than ``at_most``."""
    if at_most <= 0:
        return 0
    return int(conn.execute(sa.select(_counted(where, at_most))).scalar() or 0)


def _eligible(now: datetime) -> Any:
    return sa.and_(
        runs.c.status == S.QUEUED.value,
        sa.or_(runs.c.wake_at.is_(None), runs.c.wake_at <= now),
    )


def take_slot(
    conn: sa.Connection,
    insert_ignore: Any,
    run: sa.RowMapping,
    limits: list[int],
    now: datetime,
) -> bool:
    """In the claim's transaction: may ``run`` (already marked running) execute?
    Under every limit, the runs running plus the runs queued ahead of it (by
    ``queue_at``, then id) must be fewer than the limit. The key's row lock orders
    concurrent claims for the same key."""
    for index, limit in enumerate(limits):
        column = SLOT_COLUMNS[index]
        key = run[column.name]
        if key is None:  # created before this limit existed
            continue
        owner, same = _slot(run["function_id"], column, key)
        _locked(conn, insert_ignore, owner, f"concurrency{index + 1}", key)
        mine = run["queue_at"] or now
        ahead = sa.or_(
            runs.c.queue_at < mine, sa.and_(runs.c.queue_at == mine, runs.c.id < run["id"])
        )
        # Both counts in one statement: the key's row lock is held until the commit,
        # and every round trip under it is one more that the claims behind it wait for.
        running, queued_ahead = conn.execute(
            sa.select(
                _counted([*same, runs.c.status == S.RUNNING.value, runs.c.id != run["id"]], limit),
                _counted([*same, _eligible(now), ahead], limit),
            )
        ).one()
        if int(running or 0) + int(queued_ahead or 0) >= limit:
            return False
    return True


def slot_heads(
    conn: sa.Connection, function_id: str, index: int, key: str, limit: int, now: datetime
) -> list[str]:
    """The runs queued first for the free slots of one concurrency key (of any
    function, for a shared key)."""
    column = SLOT_COLUMNS[index]
    _, same = _slot(function_id, column, key)
    free = limit - _count(conn, [*same, runs.c.status == S.RUNNING.value], limit)
    if free <= 0:
        return []
    query = (
        sa.select(runs.c.id)
        .where(*same, _eligible(now))
        .order_by(runs.c.queue_at, runs.c.id)
        .limit(free)
    )
    return list(conn.execute(query).scalars())


def slot_waiting_keys(conn: sa.Connection, function_id: str, index: int) -> list[str]:
    """Key values of one limit with queued runs (some may be parked for a slot)."""
    column = SLOT_COLUMNS[index]
    query = (
        sa.select(column)
        .where(
            runs.c.function_id == function_id,
            column.is_not(None),
            runs.c.status == S.QUEUED.value,
        )
        .distinct()
    )
    return [str(k) for k in conn.execute(query).scalars()]
