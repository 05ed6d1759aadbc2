"""Runs parked on events: ``wait_for_event`` steps and ``cancel_on`` triggers.

An incoming event finds its waiters with one index lookup per match field in use
for its name (``cf_wait_fields`` lists those, a handful), whatever the number of
runs waiting (DESIGN principle 6). Whoever deletes a waiter row owns it: an event
and a timeout racing for the same wait resolve it exactly once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from ..codec import canonical, from_json, to_json
from ..runs import RunStatus, StepKind, StepStatus, sources_of
from .tables import events, runs, steps, wait_fields, waits

__all__ = [
    "NO_FIELD",
    "Resumed",
    "cancel_run",
    "extract",
    "find_recent_event",
    "full_match_value",
    "lock_wait_field",
    "match_value",
    "register_wait",
    "report_cancelled",
    "resolve_parent",
    "resolve_timed_out_step",
    "wake_waiters",
]

S = RunStatus
NO_FIELD = ""  # cf_wait_fields marker: some waiters of this name have no match field


def extract(event: dict[str, Any], path: str) -> Any:
    """``event`` at a dotted path ("data.order_id"); None where it is missing.

    A ``match`` pairs two events only where the field has a value: missing or null
    on either side never pairs (as in Inngest, where ``async.data.x == event.data.x``
    does not hold when both lack ``x``)."""
    value: Any = event
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


MATCH_VALUE_LENGTH = 255  # the indexed column's width


def full_match_value(event: dict[str, Any], path: str) -> str:
    """The value at ``path`` as canonical JSON, so 7 and "7" differ."""
    return canonical(extract(event, path))


def match_value(event: dict[str, Any], path: str) -> str:
    """The indexed form of the value at ``path``: its canonical JSON, cut to the
    column's width (a cut value is checked in full when an event arrives)."""
    return full_match_value(event, path)[:MATCH_VALUE_LENGTH]


@dataclass
class Resumed:
    """What an event did to waiting runs: runs to ring, runs it cancelled."""

    runs: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)


def register_wait(conn: sa.Connection, insert_ignore: Any, values: Mapping[str, Any]) -> None:
    conn.execute(waits.insert(), values)
    conn.execute(
        insert_ignore,
        {"event_name": values["event_name"], "match_field": values["match_field"] or NO_FIELD},
    )


def lock_wait_field(conn: sa.Connection, insert_ignore: Any, values: Mapping[str, Any]) -> None:
    """Take the (event name, field) row for update: a sender of that event reads it
    for share, so this transaction and the sender's are ordered."""
    key = {"event_name": values["event_name"], "match_field": values["match_field"] or NO_FIELD}
    conn.execute(insert_ignore, key)
    conn.execute(
        sa.select(wait_fields.c.event_name)
        .where(
            wait_fields.c.event_name == key["event_name"],
            wait_fields.c.match_field == key["match_field"],
        )
        .with_for_update()
    )


P = sa.bindparam

# Built once: an event that resumes a waiter runs each of these, and building a
# statement (its expressions and its cache key) costs more than its round trip.
_FIELDS_OF_NAME = (
    sa.select(wait_fields.c.match_field)
    .where(wait_fields.c.event_name == P("name"))
    .with_for_update(read=True)  # ordered against a waiter's lookback
)
_WAITERS = sa.select(waits, runs.c.events, runs.c.status.label("run_status")).join(
    runs, runs.c.id == waits.c.run_id
)
_WAITERS_WITHOUT_FIELD = _WAITERS.where(
    waits.c.event_name == P("name"), waits.c.match_field.is_(None)
)
_WAITERS_MATCHING = _WAITERS.where(
    waits.c.event_name == P("name"),
    waits.c.match_field == P("field"),
    waits.c.match_value == P("value"),
)
_TAKE_WAIT = waits.delete().where(waits.c.run_id == P("rid"), waits.c.key == P("key"))
_COMPLETE_WAIT_STEP = (
    steps.update()
    .where(
        steps.c.run_id == P("rid"),
        steps.c.key == P("w_key"),
        steps.c.status == StepStatus.WAITING.value,
    )
    .values(
        status=StepStatus.COMPLETED.value,
        output=P("w_output", type_=steps.c.output.type),
        ended_at=P("w_now", type_=steps.c.ended_at.type),
    )
)
_QUEUE_WAITING_RUN = (
    runs.update()
    .where(runs.c.id == P("rid"), runs.c.status == S.WAITING.value)
    .values(status=S.QUEUED.value, wake_at=None, due_at=P("w_due", type_=runs.c.due_at.type))
)


def wake_waiters(
    conn: sa.Connection,
    event: dict[str, Any],
    *,
    now: datetime,
    resume_due: datetime,
    condition_holds: Callable[[str, dict[str, Any], dict[str, Any]], bool],
    fields_seen: dict[str, list[str]] | None = None,
) -> Resumed:
    """Resume the runs waiting for ``event`` and cancel those it cancels, in the
    caller's transaction. ``condition_holds(cel, run_event, event)`` checks ``if_``.
    ``fields_seen`` keeps each name's match fields for the rest of the transaction
    (the rows stay share-locked until it ends), so a send of many events of one name
    looks them up once; the caller clears it when it registers a waiter."""
    name = event["name"]
    fields = None if fields_seen is None else fields_seen.get(name)
    if fields is None:
        fields = list(conn.execute(_FIELDS_OF_NAME, {"name": name}).scalars())
        if fields_seen is not None:
            fields_seen[name] = fields
    if not fields:
        return Resumed()
    candidates: list[sa.RowMapping] = []
    for path in fields:
        if path == NO_FIELD:
            found = conn.execute(_WAITERS_WITHOUT_FIELD, {"name": name})
        elif extract(event, path) is None:
            continue  # a missing (or null) field pairs with nothing, not with another null
        else:
            value = match_value(event, path)
            found = conn.execute(_WAITERS_MATCHING, {"name": name, "field": path, "value": value})
        candidates.extend(found.mappings())
    resumed = Resumed()
    for row in candidates:
        if row["expires_at"] is not None and row["expires_at"] < now:
            continue  # its timeout wins; the run's executor cleans it up
        value = row["match_value"]
        if value is not None and len(value) >= MATCH_VALUE_LENGTH:
            # the index holds a prefix: two long values may share it
            run_event = from_json(row["events"])[0]
            field_path = row["match_field"]
            if full_match_value(run_event, field_path) != full_match_value(event, field_path):
                continue
        if row["condition"] is not None:
            run_event = from_json(row["events"])[0]
            if not condition_holds(row["condition"], run_event, event):
                continue
        if row["kind"] == "cancel":
            _cancel(conn, row["run_id"], now, resumed)
        elif _take(conn, row["run_id"], row["key"]):
            _resume(conn, row["run_id"], row["key"], event, now, resume_due, resumed)
    return resumed


def _take(conn: sa.Connection, run_id: str, key: str) -> bool:
    gone = conn.execute(_TAKE_WAIT, {"rid": run_id, "key": key})
    return bool(gone.rowcount == 1)


def _resume(
    conn: sa.Connection,
    run_id: str,
    key: str,
    event: dict[str, Any],
    now: datetime,
    resume_due: datetime,
    resumed: Resumed,
) -> None:
    output = to_json(event, "event")
    values = {"rid": run_id, "w_key": key, "w_output": output, "w_now": now}
    conn.execute(_COMPLETE_WAIT_STEP, values)
    moved = conn.execute(_QUEUE_WAITING_RUN, {"rid": run_id, "w_due": resume_due}).rowcount
    if moved == 1:
        resumed.runs.append(run_id)
    # else: an executor claimed it at its timeout; it finds the wait taken and the
    # step completed with this event.


def _cancel(conn: sa.Connection, run_id: str, now: datetime, resumed: Resumed) -> None:
    done = cancel_run(conn, run_id, now)
    conn.execute(waits.delete().where(waits.c.run_id == run_id))
    if done:
        resumed.cancelled.append(run_id)


def cancel_run(conn: sa.Connection, run_id: str, now: datetime) -> bool:
    """Cancel a run that has not ended, in the caller's transaction. Bumping the fence
    stops a running executor at its next write; a parent waiting on this run (invoke)
    gets a failed step and is queued (the reconciler rings it at its next pass).

    ``due_at`` stays set: it marks the end as not yet told to the hooks
    (``run_finished``). Whoever clears it tells them, once (:func:`report_cancelled`):
    the executor that finds the run cancelled, or else the reconciler when it is due,
    at once for a parked run, after the lease for a running one (DESIGN 9)."""
    report_at = sa.case(
        (runs.c.status == S.RUNNING.value, sa.func.coalesce(runs.c.lease_expires_at, now)),
        else_=sa.literal(now, runs.c.due_at.type),
    )
    done = conn.execute(
        runs.update()
        .where(runs.c.id == run_id, runs.c.status.in_(sources_of(S.CANCELLED)))
        # due_at first: MariaDB evaluates SET left to right, and it reads the old
        # status and lease (PostgreSQL and SQLite always read the old row)
        .ordered_values(
            (runs.c.due_at, report_at),
            (runs.c.status, S.CANCELLED.value),
            (runs.c.fence, runs.c.fence + 1),
            (runs.c.ended_at, now),
            (runs.c.wake_at, None),
            (runs.c.lease_owner, None),
            (runs.c.lease_expires_at, None),
        )
    ).rowcount
    if done != 1:
        return False
    link = conn.execute(
        sa.select(runs.c.parent_run_id, runs.c.parent_step, runs.c.branch).where(
            runs.c.id == run_id
        )
    ).first()
    if link is not None and link.parent_run_id:
        error = json.dumps({"type": "Cancelled", "message": f"run {run_id} was cancelled"})
        resolve_parent(
            conn,
            link.parent_run_id,
            link.parent_step,
            branch=link.branch,
            output=None,
            error=error,
            now=now,
            resume_due=now,
        )
    return True


def report_cancelled(conn: sa.Connection, run_ids: list[str]) -> list[str]:
    """Which of these cancelled runs' ends the caller now tells the hooks: those whose
    ``due_at`` it clears (a row lock serializes rivals, so one of them wins)."""
    won = []
    for run_id in run_ids:
        cleared = conn.execute(
            runs.update()
            .where(
                runs.c.id == run_id,
                runs.c.status == S.CANCELLED.value,
                runs.c.due_at.is_not(None),
            )
            .values(due_at=None)
        ).rowcount
        if cleared == 1:
            won.append(run_id)
    return won


def find_recent_event(
    conn: sa.Connection,
    name: str,
    since: datetime,
    accept: Callable[[dict[str, Any]], bool],
    limit: int = 1000,
) -> dict[str, Any] | None:
    """The newest event named ``name`` received since ``since`` that ``accept``s."""
    rows = conn.execute(
        sa.select(events)
        .where(events.c.name == name, events.c.received_at >= since)
        .order_by(events.c.received_at.desc())
        .limit(limit)
    ).mappings()
    for row in rows:
        candidate = {
            "name": row["name"],
            "data": from_json(row["data"]),
            "id": row["id"],
            "ts": row["ts"],
        }
        if accept(candidate):
            return candidate
    return None


def resolve_parent(
    conn: sa.Connection,
    parent_run_id: str,
    parent_step: str,
    *,
    branch: int | None = None,
    output: str | None,
    error: str | None,
    now: datetime,
    resume_due: datetime,
) -> bool:
    """A child run ended: complete (or fail) the parent's waiting invoke or parallel
    step and queue the parent. False if the step was already resolved (it timed out,
    another branch settled it) or, for a branch, if other branches are still out."""
    if branch is not None:
        settled = _settle_branch(conn, parent_run_id, parent_step, branch, output, error)
        if settled is None:
            return False
        output, error = settled
    done = conn.execute(
        steps.update()
        .where(
            steps.c.run_id == parent_run_id,
            steps.c.key == parent_step,
            steps.c.status == StepStatus.WAITING.value,
        )
        .values(
            status=StepStatus.FAILED.value if error is not None else StepStatus.COMPLETED.value,
            output=output,
            error=error,
            ended_at=now,
        )
    ).rowcount
    if done != 1:
        return False
    conn.execute(
        runs.update()
        .where(runs.c.id == parent_run_id, runs.c.status == S.WAITING.value)
        .values(status=S.QUEUED.value, wake_at=None, due_at=resume_due)
    )
    return True


def _settle_branch(
    conn: sa.Connection,
    parent_run_id: str,
    parent_step: str,
    branch: int,
    output: str | None,
    error: str | None,
) -> tuple[str | None, str | None] | None:
    """Record one branch's outcome on the parallel step; return the step's final
    (output, error) once it is settled, else None.

    The parent's step row is locked first and holds the branches' results so far,
    so branches ending at the same moment are serialized on that one row and no
    transaction needs a lock on a sibling's run row (which could deadlock).
    ``all``: settled when every branch completed, or at the first failure.
    ``race``: settled by the first branch to end, whichever way it ends.
    """
    row = conn.execute(
        sa.select(steps.c.kind, steps.c.status, steps.c.output)
        .where(steps.c.run_id == parent_run_id, steps.c.key == parent_step)
        .with_for_update()
    ).first()
    if row is None or row.status != StepStatus.WAITING.value:
        return None
    if error is not None:
        failure = json.loads(error)
        failure["branch"] = branch  # the message stays the user's error's own
        return None, json.dumps(failure)
    if row.kind == StepKind.RACE.value:
        return output or "null", None
    progress = from_json(row.output)
    progress["results"][str(branch)] = from_json(output)
    if len(progress["results"]) < progress["branches"]:
        conn.execute(
            steps.update()
            .where(steps.c.run_id == parent_run_id, steps.c.key == parent_step)
            .values(output=to_json(progress, "branch results"))
        )
        return None
    ordered = [progress["results"][str(i)] for i in range(progress["branches"])]
    return to_json(ordered, "branch results"), None


def resolve_timed_out_step(
    conn: sa.Connection, run_id: str, key: str, error: str, now: datetime
) -> str | None:
    """At an invoke's timeout: fail the step unless the child resolved it first.
    Returns None if the timeout won, else the step's status ("completed"/"failed")."""
    done = conn.execute(
        steps.update()
        .where(
            steps.c.run_id == run_id, steps.c.key == key, steps.c.status == StepStatus.WAITING.value
        )
        .values(status=StepStatus.FAILED.value, error=error, ended_at=now)
    ).rowcount
    if done == 1:
        return None
    status = conn.execute(
        sa.select(steps.c.status).where(steps.c.run_id == run_id, steps.c.key == key)
    ).scalar()
    return str(status)
