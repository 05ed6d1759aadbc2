"""The store's schema (SQLAlchemy Core). Alembic migrations must produce exactly this;
tests/test_store.py (test_migrations_produce_exactly_the_models_schema)
checks it on every database."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

__all__ = [
    "cron_ticks",
    "events",
    "flow_keys",
    "heartbeats",
    "metadata",
    "paused_functions",
    "runs",
    "steps",
    "wait_fields",
    "waits",
]


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Naive UTC in the column (portable, microsecond precision on MySQL too);
    aware UTC datetimes in Python."""

    impl = sa.DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(sa.DateTime())

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc)


def Key(length: int) -> sa.types.TypeEngine[str]:
    """An identifier: compared case-sensitively everywhere (MariaDB's default
    collation is case-insensitive, which would merge ids that differ in case)."""
    return sa.String(length).with_variant(
        mysql.VARCHAR(length, collation="utf8mb4_bin"), "mysql", "mariadb"
    )


# MySQL's TEXT stops at 64 KB; step outputs can be larger.
JSONText = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")

metadata = sa.MetaData()

events = sa.Table(
    "cf_events",
    metadata,
    sa.Column("id", Key(64), primary_key=True),
    sa.Column("name", Key(255), nullable=False),
    sa.Column("data", JSONText, nullable=False),
    sa.Column("ts", sa.BigInteger, nullable=False),
    sa.Column("received_at", UTCDateTime, nullable=False),
    sa.Index("ix_cf_events_name_received", "name", "received_at"),
    # pruning takes the oldest events first (store/prune.py)
    sa.Index("ix_cf_events_received", "received_at"),
)


def partial(where: str) -> dict[str, Any]:
    """A partial index on PostgreSQL and SQLite (MariaDB indexes every row).

    Every run row is written three times (created, claimed, ended) and each write
    that changes an indexed column adds an entry to every index of the table. Most
    runs have no parent, no concurrency key and, once ended, nothing due: leaving
    those rows out of the indexes that only look for them cut the database's CPU
    per run by about a sixth (bench/engine.py part 3). Every query on these indexes
    compares the column with a value, which implies IS NOT NULL, so both databases
    use them as before."""
    clause = sa.text(where)
    return {"postgresql_where": clause, "sqlite_where": clause}


runs = sa.Table(
    "cf_runs",
    metadata,
    sa.Column("id", Key(36), primary_key=True),
    sa.Column("function_id", Key(255), nullable=False),
    sa.Column("event_id", Key(64), nullable=True),
    # the triggering event(s), copied so a run never depends on the events table
    sa.Column("events", JSONText, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("output", JSONText, nullable=True),
    sa.Column("error", JSONText, nullable=True),
    sa.Column("attempt", sa.Integer, nullable=False, default=0),
    # fencing: bumped by every claim and by cancel; writes name the value they hold
    sa.Column("fence", sa.BigInteger, nullable=False, default=0),
    sa.Column("lease_owner", sa.String(128), nullable=True),
    sa.Column("lease_expires_at", UTCDateTime, nullable=True),
    # the run may not proceed before wake_at (sleep, retry back-off)
    sa.Column("wake_at", UTCDateTime, nullable=True),
    # when the reconciler must ring again if nothing happened; NULL once terminal
    sa.Column("due_at", UTCDateTime, nullable=True),
    sa.Column("dispatches", sa.Integer, nullable=False, default=0),
    sa.Column("parent_run_id", Key(36), nullable=True),
    # the parent's step (invoke, parallel branch) this run's output resumes
    sa.Column("parent_step", Key(255), nullable=True),
    # a step.parallel branch: which of the parent step's callables this run executes
    sa.Column("branch", sa.Integer, nullable=True),
    # what hooks carry from where the run was created (Hook.carry: a trace context)
    sa.Column("context", JSONText, nullable=True),
    # flow control: the run's concurrency key values (one per limit) and its place
    # among runs queued for a slot (created_at moved by its priority)
    sa.Column("concurrency_key1", Key(255), nullable=True),
    sa.Column("concurrency_key2", Key(255), nullable=True),
    sa.Column("queue_at", UTCDateTime, nullable=True),
    # Timeouts(start=, finish=): cancelled if not started / not ended by then
    sa.Column("start_deadline", UTCDateTime, nullable=True),
    sa.Column("finish_deadline", UTCDateTime, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=True),
    sa.Column("ended_at", UTCDateTime, nullable=True),
    sa.Index("ix_cf_runs_due_at", "due_at", **partial("due_at IS NOT NULL")),
    sa.Index("ix_cf_runs_event_id", "event_id"),
    sa.Index("ix_cf_runs_function_created", "function_id", "created_at"),
    sa.Index("ix_cf_runs_status_created", "status", "created_at"),
    # the operators' run list, newest first, keyset-paged on (created_at, id); the
    # functions page counts a window by (function_id, status) from it alone (0009)
    sa.Index("ix_cf_runs_created", "created_at", "id", "function_id", "status"),
    sa.Index(
        "ix_cf_runs_parent", "parent_run_id", "parent_step", **partial("parent_run_id IS NOT NULL")
    ),
    sa.Index(
        "ix_cf_runs_slot1",
        "function_id",
        "concurrency_key1",
        "status",
        "queue_at",
        **partial("concurrency_key1 IS NOT NULL"),
    ),
    sa.Index(
        "ix_cf_runs_slot2",
        "function_id",
        "concurrency_key2",
        "status",
        "queue_at",
        **partial("concurrency_key2 IS NOT NULL"),
    ),
)

steps = sa.Table(
    "cf_steps",
    metadata,
    sa.Column("run_id", Key(36), primary_key=True),
    sa.Column("key", Key(255), primary_key=True),
    sa.Column("name", Key(255), nullable=False),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("output", JSONText, nullable=True),
    sa.Column("error", JSONText, nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("wake_at", UTCDateTime, nullable=True),
    sa.Column("started_at", UTCDateTime, nullable=True),
    sa.Column("ended_at", UTCDateTime, nullable=True),
)

# A run parked on an event: wait_for_event steps and cancel_on triggers. An incoming
# event finds its waiters by (name, field, value) in one index lookup (DESIGN 6);
# waiters with only a CEL condition have field NULL and are checked one by one.
waits = sa.Table(
    "cf_waits",
    metadata,
    sa.Column("run_id", Key(36), primary_key=True),
    sa.Column("key", Key(255), primary_key=True),  # the step key, or "cancel:N"
    sa.Column("kind", sa.String(16), nullable=False),  # "event" | "cancel"
    sa.Column("event_name", Key(255), nullable=False),
    sa.Column("match_field", Key(255), nullable=True),  # e.g. "data.order_id"
    sa.Column("match_value", Key(255), nullable=True),  # JSON of the expected value
    sa.Column("condition", JSONText, nullable=True),  # CEL over event and async
    sa.Column("expires_at", UTCDateTime, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Index("ix_cf_waits_match", "event_name", "match_field", "match_value"),
)

# Which fields waiters of an event name match on, so an incoming event knows which
# values to look up without scanning the waiters.
wait_fields = sa.Table(
    "cf_wait_fields",
    metadata,
    sa.Column("event_name", Key(255), primary_key=True),
    sa.Column("match_field", Key(255), primary_key=True),
)

# Flow-control state per (function, control, key value): the run holding an
# idempotency or singleton key, the open debounce or batch run, the throttle's and
# rate limit's GCRA schedule ("until" is the theoretical arrival time), the lock
# row that serializes slot claims for a concurrency key.
flow_keys = sa.Table(
    "cf_flow_keys",
    metadata,
    sa.Column("function_id", Key(255), primary_key=True),
    sa.Column("scope", Key(32), primary_key=True),
    sa.Column("key", Key(255), primary_key=True),
    sa.Column("run_id", Key(36), nullable=True),
    sa.Column("until", UTCDateTime, nullable=True),
    sa.Column("since", UTCDateTime, nullable=True),
)

# One row per (function, scheduled time): two beats never fire a slot twice.
cron_ticks = sa.Table(
    "cf_cron_ticks",
    metadata,
    sa.Column("function_id", Key(255), primary_key=True),
    sa.Column("scheduled_at", UTCDateTime, primary_key=True),
    sa.Column("run_id", Key(36), nullable=True),
    sa.Column("fired_at", UTCDateTime, nullable=False),
)


# Functions an operator paused (``celeryflow pause``): events and cron slots start no
# run of them until they are resumed; runs already started go on.
paused_functions = sa.Table(
    "cf_paused_functions",
    metadata,
    sa.Column("function_id", Key(255), primary_key=True),
    sa.Column("paused_at", UTCDateTime, nullable=False),
)

# Liveness of the background loops, for ``celeryflow doctor``: each reconciler
# (one per worker process, and beat's) stamps its row at every pass.
heartbeats = sa.Table(
    "cf_heartbeats",
    metadata,
    sa.Column("kind", Key(32), primary_key=True),  # "reconciler"
    sa.Column("owner", Key(64), primary_key=True),  # the process: hostname:pid
    sa.Column("host", sa.String(255), nullable=False),  # hostname:pid
    sa.Column("seen_at", UTCDateTime, nullable=False),
)
