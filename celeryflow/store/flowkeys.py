"""Flow control in the store: every decision is made inside the transaction that
records the event (admission) or claims the run (concurrency slots), on a row of
``cf_flow_keys`` locked for the (function, control, key value), so the limits hold
across every worker process and machine sharing the store.

At the event, :func:`admit` asks each control of the run (flowcontrol/controls.py)
in turn, handing it a :class:`_Ledger`: the SQL a control's decision needs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from ..codec import from_json, to_json
from ..flowcontrol import SHARED, Admission, Admitted
from ..runs import TERMINAL, RunStatus
from .rows import RunRow
from .tables import flow_keys, runs
from .waits import cancel_run

__all__ = [
    "Admitted",
    "SlotHandOver",
    "admit",
    "next_in_line",
    "slot_heads",
    "slot_waiting_keys",
    "take_slot",
]

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


def _set(conn: sa.Connection, row: Mapping[Any, Any], **values: Any) -> None:
    conn.execute(
        flow_keys.update()
        .where(
            flow_keys.c.function_id == row["function_id"],
            flow_keys.c.scope == row["scope"],
            flow_keys.c.key == row["key"],
        )
        .values(**values)
    )


class _Ledger:
    """The store's side of one admission: locked ``cf_flow_keys`` rows and the runs
    a control may move, in the recording transaction (controls.Ledger)."""

    def __init__(
        self,
        conn: sa.Connection,
        insert_ignore: Any,
        function_id: str,
        now: datetime,
        redeliver_after: timedelta,
    ) -> None:
        self.conn = conn
        self.insert_ignore = insert_ignore
        self.function_id = function_id
        self.now = now
        self.redeliver_after = redeliver_after
        self.cancelled: list[str] = []

    def lock(self, scope: str, key: str) -> Mapping[Any, Any]:
        return _locked(self.conn, self.insert_ignore, self.function_id, scope, key)

    def set(self, lock: Mapping[Any, Any], **values: Any) -> None:
        _set(self.conn, lock, **values)

    def unfinished(self, run_id: str) -> bool:
        return _unfinished(self.conn, run_id)

    def cancel(self, run_id: str) -> None:
        if cancel_run(self.conn, run_id, self.now):
            self.cancelled.append(run_id)

    def reopen(self, run_id: str, row: RunRow, wake: datetime) -> bool:
        return _reopen(self.conn, run_id, row, wake, self.redeliver_after)

    def join_batch(self, run_id: str, row: RunRow, max_size: int) -> bool | None:
        return _join_batch(self.conn, run_id, row, max_size, self.now, self.redeliver_after)

    def start_at(self, row: RunRow, when: datetime) -> None:
        row["wake_at"] = when
        row["due_at"] = when + self.redeliver_after


def admit(
    conn: sa.Connection,
    insert_ignore: Any,
    row: RunRow,
    admission: Admission,
    now: datetime,
    redeliver_after: timedelta,
) -> Admitted:
    """Apply ``admission`` to the planned run ``row``, in the recording transaction:
    each control in its order (controls.ADMISSION_CONTROLS) until one decides."""
    if admission.refused:  # the row is already the skipped record of a failed key
        return Admitted(row)
    ledger = _Ledger(conn, insert_ignore, row["function_id"], now, redeliver_after)
    admitted = Admitted(row)
    for control, key in admission.keyed:
        decided = control.admit(ledger, row, key)
        if decided is not None:
            admitted = decided
            break
    admitted.cancelled.extend(ledger.cancelled)
    return admitted


def _unfinished(conn: sa.Connection, run_id: str) -> bool:
    status = conn.execute(sa.select(runs.c.status).where(runs.c.id == run_id)).scalar()
    return status is not None and RunStatus(status) not in TERMINAL


# a debounced or batched run takes events until its first claim
_OPEN = (runs.c.status == S.QUEUED.value, runs.c.fence == 0)


def _reopen(
    conn: sa.Connection,
    run_id: str,
    row: RunRow,
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
    row: RunRow,
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


@dataclass(frozen=True)
class SlotHandOver:
    """What a finishing run of a concurrency-limited function needs to hand its
    slot on in its own transaction (RunSession.finish): its function and key values,
    the function's limits, and the lease the run taking the slot is claimed with."""

    function_id: str
    keys: Sequence[str | None]
    limits: Sequence[int]
    owner: str
    lease: timedelta

    @property
    def count_neutral(self) -> bool:
        """One limit, on a key of the function's own: the run next in line has the
        same key, so the slot moving from one run to the other changes no count
        another claim reads, and needs neither the key's lock nor a count. Two keys
        (the next run must fit the other limit too, and keep its place in that
        line) or a shared key (runs of other functions may be ahead) need
        :func:`take_slot`."""
        keyed = [k for k in self.keys if k is not None]
        return len(self.limits) == 1 and len(keyed) == 1 and not keyed[0].startswith(SHARED)


def next_in_line(
    conn: sa.Connection, hand_over: SlotHandOver, now: datetime, skip_locked: bool
) -> str | None:
    """The run of the same function with the same concurrency keys queued first (by
    ``queue_at``, then id): the one the finishing run's slot goes to. A run locked
    by a claim under way (a doorbell, another finisher) is passed over rather than
    waited for: the finishers would otherwise queue behind each other's commits."""
    if all(key is None for key in hand_over.keys):
        return None
    same = [
        column.is_(None) if key is None else column == key
        for column, key in zip(SLOT_COLUMNS, hand_over.keys, strict=False)
    ]
    query = (
        sa.select(runs.c.id)
        .where(runs.c.function_id == hand_over.function_id, *same, _eligible(now))
        .order_by(runs.c.queue_at, runs.c.id)
        .limit(1)
    )
    if skip_locked:
        query = query.with_for_update(skip_locked=True)
    found = conn.execute(query).scalar()
    return None if found is None else str(found)
