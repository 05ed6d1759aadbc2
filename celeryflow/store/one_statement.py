"""The two writes every run makes (its event, its finish), and a park, in as few
statements as the database allows: on PostgreSQL each is one statement in autocommit.

On PostgreSQL a round trip costs more than the work of a small write, and a
transaction costs three of them (BEGIN, the statement, COMMIT). The commonest
event (a fresh id that no run waits for, starting runs without flow control) and
the commonest finish (the last step's result, or the completion of a sleep or of a
retried step, and the run's end) and park (the step that parks the run, a sleep say,
and the run's move) are therefore each written by
one statement whose data-modifying CTEs are all or nothing, like a
transaction. Anything less common (a duplicate id, waiting runs to wake, flow
control, cancel_on waiters, a parent to resume) takes the general path in a
transaction, which decides the same way.

SQLite has no data-modifying CTEs, but a statement there costs Python time, not a
round trip: its event write is the event INSERT (with the same conditions) and the
runs' INSERT in one transaction, instead of three statements and a waiter lookup.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from .rows import RunRow
from .tables import events, runs, steps, wait_fields

__all__ = [
    "MAX_RUNS_IN_ONE_STATEMENT",
    "event_insert",
    "event_statement",
    "event_statement_params",
    "run_end_handing_over",
    "run_update_with_step",
    "run_update_with_updated_step",
    "with_step_params",
]

# an event starting more runs than this is recorded by the general path
MAX_RUNS_IN_ONE_STATEMENT = 4
EVENT_COLUMNS = ("id", "name", "data", "ts", "received_at")
RUN_COLUMNS = tuple(c.name for c in runs.c)
STEP_COLUMNS = tuple(c.name for c in steps.c)
KEYS = ("run_id", "key")  # a step row's primary key

P = sa.bindparam


def event_insert(dialect: str) -> sa.Insert:
    """Insert the event unless its id exists or runs wait for its name (both need the
    general path: the 24 h window, waking the waiters); returns its id if it did."""
    nobody_waits = ~sa.exists().where(wait_fields.c.event_name == P("e_name"))
    values = sa.select(*(P(f"e_{n}", type_=events.c[n].type) for n in EVENT_COLUMNS))
    insert = postgresql.insert(events) if dialect == "postgresql" else sqlite.insert(events)
    return (
        insert.from_select(list(EVENT_COLUMNS), values.where(nobody_waits))
        .on_conflict_do_nothing()
        .returning(events.c.id)
    )


def event_statement(run_count: int) -> sa.Select[Any]:
    """PostgreSQL: :func:`event_insert` and, if it inserted, the ``run_count`` runs;
    the statement returns 1 if it wrote, 0 if it wrote nothing."""
    inserted = event_insert("postgresql").cte("ev")
    statement = sa.select(sa.func.count()).select_from(inserted)
    if run_count == 0:
        return statement
    fresh = sa.exists(sa.select(inserted.c.id))
    rows = [
        sa.select(*(P(f"r{i}_{n}", type_=runs.c[n].type) for n in RUN_COLUMNS)).where(fresh)
        for i in range(run_count)
    ]
    source = rows[0] if run_count == 1 else sa.union_all(*rows)
    new_runs = sa.insert(runs).from_select(list(RUN_COLUMNS), source).cte("new_runs")
    return statement.add_cte(new_runs)


def event_statement_params(event: dict[str, Any], rows: list[RunRow]) -> dict[str, Any]:
    params = {f"e_{n}": event[n] for n in EVENT_COLUMNS}
    for i, row in enumerate(rows):
        params.update({f"r{i}_{n}": row.get(n) for n in RUN_COLUMNS})
    return params


def run_update_with_step(update: sa.Update) -> sa.Insert:
    """``update`` (the run's fenced UPDATE to its end, or to a park) and the INSERT of
    one new step,
    which takes its run id from the UPDATE's RETURNING: the step is written exactly
    when the run's end is, and a cancel or takeover committed meanwhile (seen by the
    UPDATE when it re-checks the row it waited for) stops both. Returns the step key
    if both were written. (The UPDATE's own row lock orders it; a share lock taken
    first, as a lone step write does, would cost a WAL record more.)"""
    ended = update.returning(runs.c.id).cte("ended")
    source = sa.select(
        ended.c.id, *(P(f"s_{n}", type_=steps.c[n].type) for n in STEP_COLUMNS if n != "run_id")
    )
    return steps.insert().from_select(list(STEP_COLUMNS), source).returning(steps.c.key)


def run_update_with_updated_step(update: sa.Update) -> sa.Update:
    """``update`` (the run's fenced UPDATE to its end, or to a park) and the UPDATE of
    one step row it already has (a sleep that ended, a step that succeeded on a later
    attempt), which joins the run's RETURNING: both are written, or neither. The run's
    UPDATE also requires the step row, so a missing one writes nothing, as the general
    path's transaction rolls back then. Returns the step key if both were written."""
    has_step = sa.exists().where(steps.c.run_id == P("rid"), steps.c.key == P("s_key"))
    ended = update.where(has_step).returning(runs.c.id).cte("ended")
    values = {n: P(f"s_{n}", type_=steps.c[n].type) for n in STEP_COLUMNS if n not in KEYS}
    return (
        steps.update()
        .where(steps.c.run_id == ended.c.id, steps.c.key == P("s_key"))
        .values(values)
        .returning(steps.c.key)
    )


def run_end_handing_over(
    end: sa.Update,
    step: str | None,
    claim_values: Mapping[str, Any],
    claimable: sa.ColumnElement[bool],
    claim_columns: Sequence[sa.Column[Any]],
) -> sa.Select[Any]:
    """PostgreSQL: ``end`` (the run's fenced UPDATE to its end), with its ``step``
    ("new", "updated" or None, as :func:`run_update_with_step` and
    :func:`run_update_with_updated_step` write it), and the claim of the run next in
    line for the concurrency slot the end frees (same function, its one key
    ``h_key``; queued first by ``queue_at``, then id; one locked by a claim under way
    is passed over): store/session.py's hand-over of a slot whose counts the move
    does not change (flowkeys.SlotHandOver.count_neutral) in one statement, where a
    transaction costs six round trips while the function's other slots wait on the
    same line. No row if the end was not written (the fence no longer holds); else
    one row: ``ended_run`` and, if a run was claimed, its ``claim_columns``."""
    if step == "updated":
        end = end.where(sa.exists().where(steps.c.run_id == P("rid"), steps.c.key == P("s_key")))
    ended = end.returning(runs.c.id).cte("ended")
    written: sa.CTE | None = None
    step_values = {n: P(f"s_{n}", type_=steps.c[n].type) for n in STEP_COLUMNS if n not in KEYS}
    if step == "new":
        values = (P(f"s_{n}", type_=steps.c[n].type) for n in STEP_COLUMNS if n != "run_id")
        source = sa.select(ended.c.id, *values)
        insert = steps.insert().from_select(list(STEP_COLUMNS), source)
        written = insert.returning(steps.c.key).cte("stepped")
    elif step == "updated":
        update = steps.update().where(steps.c.run_id == ended.c.id, steps.c.key == P("s_key"))
        written = update.values(step_values).returning(steps.c.key).cte("stepped")
    eligible = sa.and_(
        runs.c.status == "queued", sa.or_(runs.c.wake_at.is_(None), runs.c.wake_at <= P("now"))
    )
    following = (
        sa.select(runs.c.id)
        .where(
            runs.c.function_id == P("h_function_id"),
            runs.c.concurrency_key1 == P("h_key"),
            runs.c.concurrency_key2.is_(None),
            eligible,
            sa.exists(sa.select(ended.c.id)),
        )
        .order_by(runs.c.queue_at, runs.c.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .cte("following")
    )
    claimed = (
        runs.update()
        .where(runs.c.id == following.c.id, claimable)
        .values(**claim_values)
        .returning(*claim_columns)
        .cte("claimed")
    )
    statement = sa.select(ended.c.id.label("ended_run"), *claimed.c).select_from(
        ended.outerjoin(claimed, sa.true())
    )
    return statement if written is None else statement.add_cte(written)


def with_step_params(update: dict[str, Any], step: Mapping[str, Any]) -> dict[str, Any]:
    """The run update's own parameters (rid, p_fence, ...) and the step row's."""
    return {**update, **{f"s_{n}": step.get(n) for n in STEP_COLUMNS if n != "run_id"}}
