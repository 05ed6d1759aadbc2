"""Read-only views for operators (the CLI, a dashboard): typed rows, built here so
nothing above the store writes SQL.

Every query is bounded and walks an index, so it stays fast at a million runs:

* :func:`list_runs` pages newest-first by keyset on ``(created_at, id)`` (never
  OFFSET): with no filter on ``ix_cf_runs_created``; by function on
  ``ix_cf_runs_function_created``; by status on ``ix_cf_runs_status_created`` (one
  query per status, merged here, so each walks its index in order); by event id on
  ``ix_cf_runs_event_id``. An event-name filter joins ``cf_events`` on its primary
  key while walking one of those (rare names: the database may start from
  ``ix_cf_events_name_received`` and ``ix_cf_runs_event_id`` instead).
* :func:`run_detail`: the run's primary key, its steps' and waiters' primary keys
  (``(run_id, key)``), its children on ``ix_cf_runs_parent``.
* :func:`recent_events`: ``ix_cf_events_received`` (``ix_cf_events_name_received`` by
  name), then the runs of the page's events on ``ix_cf_runs_event_id``.
* :func:`function_stats` (``store/stats.py``): counts by function and status over a
  window, from ``ix_cf_runs_created`` alone; p50/p95 from the newest ended runs.
* :func:`waiting_runs`: waiting runs on ``ix_cf_runs_status_created``, their
  waiters by primary key.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ..codec import from_json
from ..errors import ConfigError, RunNotFound
from ..runs import RunStatus
from .stats import FunctionStats, function_stats
from .tables import events, runs, steps, waits

if TYPE_CHECKING:
    from .store import Store

__all__ = [
    "Cursor",
    "EventRow",
    "FunctionStats",
    "RunDetail",
    "RunFilter",
    "RunPage",
    "RunRow",
    "StepRow",
    "WaitRow",
    "count_runs",
    "decode_cursor",
    "encode_cursor",
    "event_payloads",
    "function_stats",
    "iter_runs",
    "list_runs",
    "recent_events",
    "run_detail",
    "waiting_runs",
]

Cursor = tuple[datetime, str]  # (created_at, id) of the last row of a page
MAX_PAGE = 1000


@dataclass(frozen=True)
class RunFilter:
    """Which runs :func:`list_runs` shows; every field optional."""

    function_id: str | None = None
    statuses: Sequence[RunStatus] = ()
    event_name: str | None = None
    event_id: str | None = None
    since: datetime | None = None  # created at or after
    until: datetime | None = None  # created before


@dataclass(frozen=True)
class RunRow:
    id: str
    function_id: str
    status: RunStatus
    event_id: str | None
    event_name: str | None
    attempt: int
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    error: str | None  # "Type: message" of a failed run
    parent_run_id: str | None = None

    @property
    def duration(self) -> timedelta | None:
        """From the first start to the end; None until it ended."""
        if self.ended_at is None:
            return None
        return self.ended_at - (self.started_at or self.created_at)

    def as_json(self) -> dict[str, Any]:
        duration = self.duration
        return {
            "id": self.id,
            "function_id": self.function_id,
            "status": self.status.value,
            "event_id": self.event_id,
            "event_name": self.event_name,
            "attempt": self.attempt,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "ended_at": _iso(self.ended_at),
            "duration_s": duration.total_seconds() if duration is not None else None,
            "error": self.error,
            "parent_run_id": self.parent_run_id,
        }


@dataclass(frozen=True)
class RunPage:
    rows: list[RunRow]
    next_cursor: Cursor | None  # None: this was the last page


@dataclass(frozen=True)
class WaitRow:
    """A waiter: a ``wait_for_event`` step (kind "event") or a ``cancel_on`` (kind
    "cancel"). ``match_value`` is the JSON of the value the event must carry."""

    run_id: str
    key: str
    kind: str
    event_name: str
    match_field: str | None
    match_value: str | None
    condition: str | None
    expires_at: datetime | None
    created_at: datetime
    function_id: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "function_id": self.function_id,
            "key": self.key,
            "kind": self.kind,
            "event_name": self.event_name,
            "match_field": self.match_field,
            "match_value": self.match_value,
            "condition": self.condition,
            "expires_at": _iso(self.expires_at),
            "created_at": _iso(self.created_at),
        }


@dataclass(frozen=True)
class StepRow:
    key: str
    name: str
    kind: str
    status: str
    attempts: int
    position: int
    started_at: datetime | None
    ended_at: datetime | None
    wake_at: datetime | None  # a sleep's wake time, a wait's timeout
    error: str | None
    wait: WaitRow | None = None  # what a waiting wait_for_event step waits for
    child_run_ids: list[str] = field(default_factory=list)  # invoke, parallel branches

    def as_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "name": self.name,
            "kind": self.kind,
            "status": self.status,
            "attempts": self.attempts,
            "position": self.position,
            "started_at": _iso(self.started_at),
            "ended_at": _iso(self.ended_at),
            "wake_at": _iso(self.wake_at),
            "error": self.error,
            "wait": self.wait.as_json() if self.wait else None,
            "child_run_ids": self.child_run_ids,
        }


@dataclass(frozen=True)
class RunDetail:
    run: RunRow
    output: Any
    error: dict[str, Any] | None
    events: list[dict[str, Any]]
    wake_at: datetime | None
    parent_step: str | None
    branch: int | None
    steps: list[StepRow]
    children: list[RunRow]
    waits: list[WaitRow]  # all of the run's waiters, cancel_on included
    steps_total: int = -1  # every step of the run; -1: as many as ``steps``

    @property
    def steps_hidden(self) -> int:
        """How many earlier steps ``steps`` leaves out (``step_limit``)."""
        return max(0, self.steps_total - len(self.steps))

    def as_json(self) -> dict[str, Any]:
        return {
            **self.run.as_json(),
            "output": self.output,
            "error_detail": self.error,
            "events": self.events,
            "wake_at": _iso(self.wake_at),
            "parent_step": self.parent_step,
            "branch": self.branch,
            "steps": [s.as_json() for s in self.steps],
            "children": [c.as_json() for c in self.children],
            "waits": [w.as_json() for w in self.waits],
        }


@dataclass(frozen=True)
class EventRow:
    id: str
    name: str
    ts: int
    received_at: datetime
    runs: list[RunRow]  # the runs it started

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "ts": self.ts,
            "received_at": _iso(self.received_at),
            "runs": [r.as_json() for r in self.runs],
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def encode_cursor(cursor: Cursor) -> str:
    """A page cursor as one opaque-looking string (for --after, a URL query)."""
    return f"{cursor[0].isoformat()}~{cursor[1]}"


def decode_cursor(text: str) -> Cursor:
    stamp, sep, run_id = text.partition("~")
    try:
        if not sep or not run_id:
            raise ValueError
        return datetime.fromisoformat(stamp), run_id
    except ValueError:
        raise ConfigError(f"page cursor {text!r} is not one this store gave") from None


def error_line(error: Any) -> str | None:
    """``Type: message`` of a stored error (JSON text or dict); None without one."""
    info = from_json(error) if isinstance(error, str) else error
    if not isinstance(info, dict):
        return None if info is None else str(info)
    kind, message = info.get("type"), info.get("message")
    line = f"{kind}: {message}" if kind and message else str(kind or message or "")
    return " ".join(line.split()) or None


RUN_COLUMNS = (
    runs.c.id,
    runs.c.function_id,
    runs.c.status,
    runs.c.event_id,
    runs.c.attempt,
    runs.c.created_at,
    runs.c.started_at,
    runs.c.ended_at,
    runs.c.error,
    runs.c.parent_run_id,
)


def _run_select() -> sa.Select[Any]:
    return sa.select(*RUN_COLUMNS, events.c.name.label("event_name")).select_from(
        runs.outerjoin(events, events.c.id == runs.c.event_id)
    )


def _run_row(row: sa.RowMapping) -> RunRow:
    return RunRow(
        id=str(row["id"]),
        function_id=str(row["function_id"]),
        status=RunStatus(row["status"]),
        event_id=row["event_id"],
        event_name=row["event_name"],
        attempt=int(row["attempt"] or 0),
        created_at=row["created_at"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        error=error_line(row["error"]),
        parent_run_id=row["parent_run_id"],
    )


def list_runs(
    store: Store, where: RunFilter | None = None, *, limit: int = 50, after: Cursor | None = None
) -> RunPage:
    """One page of runs, newest first; pass the page's ``next_cursor`` as ``after``
    for the next one."""
    where = where or RunFilter()
    limit = max(1, min(limit, MAX_PAGE))
    base = _filtered(_run_select(), where)
    if after is not None:
        stamp, run_id = after
        # the leading range bound lets every index above seek to the cursor
        base = base.where(
            runs.c.created_at <= stamp,
            sa.or_(runs.c.created_at < stamp, runs.c.id < run_id),
        )
    base = base.order_by(runs.c.created_at.desc(), runs.c.id.desc()).limit(limit + 1)
    statuses = list(dict.fromkeys(RunStatus(s).value for s in where.statuses))
    with store.engine.connect() as conn:
        if len(statuses) <= 1:
            query = base.where(runs.c.status == statuses[0]) if statuses else base
            found = [_run_row(r) for r in conn.execute(query).mappings()]
        else:
            per_status = [
                [_run_row(r) for r in conn.execute(base.where(runs.c.status == s)).mappings()]
                for s in statuses
            ]
            merged = heapq.merge(*per_status, key=lambda r: (r.created_at, r.id), reverse=True)
            found = [row for _, row in zip(range(limit + 1), merged, strict=False)]
    page = found[:limit]
    more = len(found) > limit
    return RunPage(page, (page[-1].created_at, page[-1].id) if more and page else None)


def _filtered(query: sa.Select[Any], where: RunFilter) -> sa.Select[Any]:
    if where.function_id is not None:
        query = query.where(runs.c.function_id == where.function_id)
    if where.event_id is not None:
        query = query.where(runs.c.event_id == where.event_id)
    if where.event_name is not None:
        query = query.where(events.c.name == where.event_name)
    if where.since is not None:
        query = query.where(runs.c.created_at >= where.since)
    if where.until is not None:
        query = query.where(runs.c.created_at < where.until)
    return query


def count_runs(store: Store, where: RunFilter) -> int:
    """How many runs :func:`list_runs` would page through (the same indexes, counted
    in the database)."""
    query = sa.select(sa.func.count()).select_from(
        runs.outerjoin(events, events.c.id == runs.c.event_id)
        if where.event_name is not None
        else runs
    )
    query = _filtered(query, where)
    if where.statuses:
        query = query.where(runs.c.status.in_([RunStatus(s).value for s in where.statuses]))
    with store.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def iter_runs(store: Store, where: RunFilter, *, page: int = 500) -> Iterator[list[RunRow]]:
    """Every run :func:`list_runs` shows, a page at a time (for bulk cancel and
    replay: each page is read when the caller has dealt with the previous one)."""
    after: Cursor | None = None
    while True:
        found = list_runs(store, where, limit=page, after=after)
        if found.rows:
            yield found.rows
        if found.next_cursor is None:
            return
        after = found.next_cursor


def _wait_row(row: sa.RowMapping, function_id: str | None = None) -> WaitRow:
    return WaitRow(
        run_id=str(row["run_id"]),
        key=str(row["key"]),
        kind=str(row["kind"]),
        event_name=str(row["event_name"]),
        match_field=row["match_field"],
        match_value=row["match_value"],
        condition=row["condition"],
        expires_at=row["expires_at"],
        created_at=row["created_at"],
        function_id=function_id,
    )


def run_detail(store: Store, run_id: str, *, step_limit: int | None = None) -> RunDetail:
    """One run with its steps, waiters and child runs; RunNotFound if none. With
    ``step_limit``, only the newest that many steps (by position) and their child
    runs, and ``steps_total`` counts all of them: a page of a run with thousands of
    steps stays quick (the primary key's range of the run is counted, the newest
    rows sorted out of it by the database)."""
    with store.engine.connect() as conn:
        head = (
            conn.execute(
                _run_select()
                .add_columns(
                    runs.c.output,
                    runs.c.events,
                    runs.c.wake_at,
                    runs.c.parent_step,
                    runs.c.branch,
                )
                .where(runs.c.id == run_id)
            )
            .mappings()
            .first()
        )
        if head is None:
            raise RunNotFound(f"no run with id {run_id!r}")
        query = steps.select().where(steps.c.run_id == run_id)
        total = -1
        if step_limit is None:
            step_rows = list(conn.execute(query.order_by(steps.c.position)).mappings())
        else:
            newest = query.order_by(steps.c.position.desc()).limit(max(1, step_limit))
            step_rows = list(conn.execute(newest).mappings())[::-1]
            total = len(step_rows)
            if total >= step_limit:
                count = sa.select(sa.func.count()).where(steps.c.run_id == run_id)
                total = int(conn.execute(count).scalar_one())
        wait_rows = [
            _wait_row(w, head["function_id"])
            for w in conn.execute(waits.select().where(waits.c.run_id == run_id)).mappings()
        ]
        of_children = (
            _run_select()
            .add_columns(runs.c.parent_step, runs.c.branch)
            .where(runs.c.parent_run_id == run_id)
        )
        if step_limit is not None:  # the newest, as for the steps
            newest_children = of_children.order_by(
                runs.c.created_at.desc(), runs.c.branch.desc()
            ).limit(max(1, step_limit))
            children = list(conn.execute(newest_children).mappings())[::-1]
        else:
            children = list(
                conn.execute(of_children.order_by(runs.c.created_at, runs.c.branch)).mappings()
            )
    by_step: dict[str, list[str]] = defaultdict(list)
    for child in children:
        by_step[str(child["parent_step"])].append(str(child["id"]))
    waiting = {w.key: w for w in wait_rows if w.kind == "event"}
    step_list = [
        StepRow(
            key=str(s["key"]),
            name=str(s["name"]),
            kind=str(s["kind"]),
            status=str(s["status"]),
            attempts=int(s["attempts"] or 0),
            position=int(s["position"]),
            started_at=s["started_at"],
            ended_at=s["ended_at"],
            wake_at=s["wake_at"],
            error=error_line(s["error"]),
            wait=waiting.get(str(s["key"])),
            child_run_ids=by_step.get(str(s["key"]), []),
        )
        for s in step_rows
    ]
    return RunDetail(
        run=_run_row(head),
        output=from_json(head["output"]),
        error=from_json(head["error"]),
        events=from_json(head["events"]) or [],
        wake_at=head["wake_at"],
        parent_step=head["parent_step"],
        branch=head["branch"],
        steps=step_list,
        children=[_run_row(c) for c in children],
        waits=wait_rows,
        steps_total=total if total >= 0 else len(step_list),
    )


def recent_events(
    store: Store,
    *,
    name: str | None = None,
    limit: int = 20,
    before: datetime | None = None,
) -> list[EventRow]:
    """The newest events (of ``name``; received before ``before``), each with the
    runs it started."""
    limit = max(1, min(limit, MAX_PAGE))
    query = sa.select(events.c.id, events.c.name, events.c.ts, events.c.received_at)
    if name is not None:
        query = query.where(events.c.name == name)
    if before is not None:
        query = query.where(events.c.received_at < before)
    query = query.order_by(events.c.received_at.desc()).limit(limit)
    with store.engine.connect() as conn:
        found = list(conn.execute(query).mappings())
        started: dict[str, list[RunRow]] = defaultdict(list)
        ids = [str(e["id"]) for e in found]
        if ids:
            run_query = _run_select().where(runs.c.event_id.in_(ids)).order_by(runs.c.created_at)
            for row in conn.execute(run_query).mappings():
                started[str(row["event_id"])].append(_run_row(row))
    return [
        EventRow(
            id=str(e["id"]),
            name=str(e["name"]),
            ts=int(e["ts"]),
            received_at=e["received_at"],
            runs=started.get(str(e["id"]), []),
        )
        for e in found
    ]


def waiting_runs(
    store: Store,
    *,
    function_id: str | None = None,
    event_name: str | None = None,
    limit: int = 100,
) -> list[WaitRow]:
    """The runs parked in ``wait_for_event``, newest first: which event, the value it
    must match, until when."""
    limit = max(1, min(limit, MAX_PAGE))
    query = (
        sa.select(waits, runs.c.function_id.label("function_id"))
        .select_from(runs.join(waits, waits.c.run_id == runs.c.id))
        .where(runs.c.status == RunStatus.WAITING.value, waits.c.kind == "event")
        .order_by(runs.c.created_at.desc(), runs.c.id.desc())
        .limit(limit)
    )
    if function_id is not None:
        query = query.where(runs.c.function_id == function_id)
    if event_name is not None:
        query = query.where(waits.c.event_name == event_name)
    with store.engine.connect() as conn:
        return [_wait_row(w, str(w["function_id"])) for w in conn.execute(query).mappings()]


def event_payloads(store: Store, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``{id: {"name", "data", "ts"}}`` of the events with these ids (at most
    ``MAX_PAGE``, by primary key; a pruned one is absent): the payloads
    :func:`recent_events` leaves out, for the page of events shown."""
    wanted = list(dict.fromkeys(ids))[:MAX_PAGE]
    if not wanted:
        return {}
    query = sa.select(events.c.id, events.c.name, events.c.data, events.c.ts).where(
        events.c.id.in_(wanted)
    )
    with store.engine.connect() as conn:
        return {
            str(row.id): {"name": str(row.name), "data": from_json(row.data), "ts": int(row.ts)}
            for row in conn.execute(query)
        }
