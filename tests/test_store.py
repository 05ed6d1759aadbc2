"""The store on SQLite, PostgreSQL and MariaDB: schema, fencing, claims, dedup."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from celeryflow.durations import utcnow
from celeryflow.errors import ConfigError, RunNotFound
from celeryflow.events import Event
from celeryflow.planning import new_run_id
from celeryflow.runs import RunStatus
from celeryflow.store import PlannedRun, Store
from celeryflow.store.migrate import VERSION_TABLE, head_revision
from celeryflow.store.tables import metadata, runs


def _run_row(function_id: str = "f") -> dict[str, object]:
    now = utcnow()
    return {
        "id": new_run_id(),
        "function_id": function_id,
        "event_id": None,
        "events": '[{"name":"x","data":{},"id":"e","ts":1}]',
        "status": "queued",
        "attempt": 0,
        "fence": 0,
        "dispatches": 0,
        "due_at": now,
        "created_at": now,
    }


def _step(run_id: str, key: str) -> dict[str, object]:
    return {
        "run_id": run_id,
        "key": key,
        "name": key,
        "position": 0,
        "kind": "run",
        "status": "completed",
        "output": "1",
        "attempts": 1,
        "started_at": utcnow(),
        "ended_at": utcnow(),
    }


def test_migrations_produce_exactly_the_models_schema(store_url: str) -> None:
    store = Store(store_url, auto_migrate=False)
    store.migrate()
    store.migrate()  # idempotent
    with store.engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "version_table": VERSION_TABLE}
        )
        diff = [
            d
            for d in compare_metadata(context, metadata)
            # our version table is alembic's, not the models'
            if not (d[0] == "remove_table" and d[1].name == VERSION_TABLE)
        ]
    assert diff == []


MIGRATE_AT = """
import sys, time
from celeryflow.store import Store
store = Store(sys.argv[1], auto_migrate=False)
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
print(store.migrate()[1])
"""


def test_processes_migrating_a_fresh_store_at_once_all_succeed(store_url: str) -> None:
    # Workers started together on a fresh database each migrate it (auto_migrate):
    # without a lock two would create the same tables and all but one fail (PostgreSQL:
    # a UniqueViolation on pg_type; MariaDB: the table exists). Processes, not threads:
    # alembic's migration context is one per process. They start on one clock time,
    # after each has imported celeryflow.
    migrators = 4
    start_at = str(time.time() + 4)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", MIGRATE_AT, store_url, start_at],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(migrators)
    ]
    results = [process.communicate(timeout=120) for process in processes]
    failures = [err for (_out, err), p in zip(results, processes, strict=True) if p.returncode != 0]
    assert failures == []
    assert [out.strip() for out, _err in results] == [head_revision()] * migrators
    assert Store(store_url).list_runs() == []


def test_a_production_database_must_be_migrated_first(store_url: str) -> None:
    if store_url.startswith("sqlite"):
        Store(store_url).get_run  # noqa: B018 - SQLite is created on first use
        assert Store(store_url).list_runs() == []
        return
    with pytest.raises(ConfigError, match="celeryflow migrate"):
        Store(store_url).list_runs()
    result = subprocess.run(
        [sys.executable, "-m", "celeryflow.cli", "migrate", "--store", store_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "created the celeryflow store at" in result.stdout
    assert Store(store_url).list_runs() == []


def test_a_stale_executor_cannot_write(store_url: str) -> None:
    store = Store(store_url, auto_migrate=True)
    row = _run_row()
    store.insert_runs([row])
    run_id = str(row["id"])
    now = utcnow()
    first = store.claim(run_id, "a", now, now + timedelta(milliseconds=1))
    assert first is not None
    # The first lease lapses; a second executor takes over with a higher fence.
    later = now + timedelta(seconds=1)
    second = store.claim(run_id, "b", later, later + timedelta(seconds=30))
    assert second is not None and second.fence == first.fence + 1
    done = RunStatus.COMPLETED
    with store.session() as stale, store.session() as live:
        assert stale.save_steps(first.fence, [(_step(run_id, "s1"), True)]) is False
        assert stale.finish(run_id, first.fence, status=done, now=later) == (False, False)
        assert live.save_steps(second.fence, [(_step(run_id, "s1"), True)]) is True
        assert live.finish(run_id, second.fence, status=done, now=later) == (True, False)
    assert [s.id for s in store.get_run(run_id).steps] == ["s1"]


def test_a_refused_run_update_takes_its_step_writes_back(store_url: str) -> None:
    # On PostgreSQL a run session stays in autocommit for its one-statement writes;
    # a write of several statements must still be one transaction.
    store = Store(store_url, auto_migrate=True)
    row = _run_row()
    store.insert_runs([row])
    run_id = str(row["id"])
    now = utcnow()
    claim = store.claim(run_id, "a", now, now + timedelta(seconds=30))
    assert claim is not None
    with store.engine.begin() as conn:  # ended elsewhere, the fence left as it was
        conn.execute(runs.update().where(runs.c.id == run_id).values(status="completed"))
    with store.session() as session:
        assert session.save_steps(claim.fence, [(_step(run_id, "before"), True)]) is True
        moved = session.move(
            run_id,
            claim.fence,
            status=RunStatus.SLEEPING,
            wake_at=now,
            due_at=now,
            attempt=0,
            writes=[(_step(run_id, "s1"), True), (_step(run_id, "s2"), True)],
        )
        assert moved is False
        assert session.save_steps(claim.fence, [(_step(run_id, "after"), True)]) is True
    assert sorted(s.id for s in store.get_run(run_id).steps) == ["after", "before"]


def test_a_session_whose_connection_was_dropped_commits_its_next_write(
    postgres_store_url: str,
) -> None:
    # SQLAlchemy reconnects a session's Connection on a fresh DBAPI connection, which
    # is not in autocommit: a one-statement write there must still commit.
    store = Store(postgres_store_url, auto_migrate=True)
    row = _run_row()
    store.insert_runs([row])
    run_id = str(row["id"])
    now = utcnow()
    with store.session() as session:
        claim = session.claim(run_id, "a", now, now + timedelta(seconds=30))
        assert claim is not None
        pid = session.conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        session.conn.commit()  # the read's transaction, where autocommit is off
        with store.engine.connect() as other:
            other.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        with pytest.raises(Exception, match=r"(?i)connection"):
            session.save_steps(claim.fence, [(_step(run_id, "lost"), True)])
        assert session.save_steps(claim.fence, [(_step(run_id, "s1"), True)]) is True
        held, _ = session.finish(
            run_id,
            claim.fence,
            status=RunStatus.COMPLETED,
            now=now,
            writes=[(_step(run_id, "s2"), True)],
        )
        assert held
    with store.engine.connect() as other:  # committed: seen from another connection
        keys = other.execute(sa.text("SELECT key FROM cf_steps WHERE run_id = :r"), {"r": run_id})
        assert sorted(keys.scalars()) == ["s1", "s2"]
    assert store.get_run(run_id).status == RunStatus.COMPLETED


def test_only_one_of_many_concurrent_claims_wins(store_url: str) -> None:
    store = Store(store_url, auto_migrate=True)
    rows = [_run_row() for _ in range(5)]
    store.insert_runs(rows)
    for row in rows:
        winners: list[int] = []
        barrier = threading.Barrier(8)

        def claim(
            row: dict[str, object] = row,
            barrier: threading.Barrier = barrier,
            winners: list[int] = winners,
        ) -> None:
            barrier.wait()
            now = utcnow()
            lease = now + timedelta(seconds=30)
            got = store.claim(str(row["id"]), threading.current_thread().name, now, lease)
            if got is not None:
                winners.append(got.fence)

        threads = [threading.Thread(target=claim) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert winners == [1]


def test_cancel_fences_out_the_executor(store_url: str) -> None:
    store = Store(store_url, auto_migrate=True)
    row = _run_row()
    store.insert_runs([row])
    run_id = str(row["id"])
    now = utcnow()
    claim = store.claim(run_id, "a", now, now + timedelta(seconds=30))
    assert claim is not None
    assert store.cancel(run_id, now) is True
    with store.session() as session:
        assert session.save_steps(claim.fence, [(_step(run_id, "s"), True)]) is False
    assert store.cancel(run_id, now) is False
    assert store.get_run(run_id).status == RunStatus.CANCELLED
    with pytest.raises(RunNotFound):
        store.cancel("no-such-run", now)


def test_an_event_id_older_than_24_hours_counts_as_new(store_url: str) -> None:
    store = Store(store_url, auto_migrate=True)
    ev = Event(name="a/b", id="evt-x", data={"n": 1}, ts=1)

    def plan(e: Event) -> list[PlannedRun]:
        return [PlannedRun(_run_row())]

    assert len(store.record_events([ev], plan, utcnow()).created) == 1
    assert store.record_events([ev], plan, utcnow()).created == []
    assert len(store.record_events([ev], plan, utcnow() + timedelta(hours=25)).created) == 1


def test_due_runs_are_taken_once_per_redelivery_window(store_url: str) -> None:
    store = Store(store_url, auto_migrate=True)
    overdue, later = _run_row(), _run_row()
    later["due_at"] = utcnow() + timedelta(hours=1)
    store.insert_runs([overdue, later])
    now = utcnow()
    taken = store.take_due(now, timedelta(seconds=1), timedelta(seconds=30))
    assert [d.id for d in taken] == [overdue["id"]]
    assert store.take_due(now, timedelta(seconds=1), timedelta(seconds=30)) == []
    with store.engine.connect() as conn:
        dispatches = conn.execute(
            sa.select(runs.c.dispatches).where(runs.c.id == overdue["id"])
        ).scalar()
    assert dispatches == 1


def test_many_processes_opening_a_fresh_sqlite_store_at_once(tmp_path: Path) -> None:
    # Each process creates the schema on first use; none may fail with "locked"
    # (switching a fresh file to WAL races without SQLite's busy handler).
    url = f"sqlite:///{tmp_path}/fresh.db"
    start_at = time.time() + 2.0  # all processes imported and waiting by then
    code = (
        "import sys, time; from celeryflow.store import Store; s = Store(sys.argv[1]); "
        "time.sleep(max(0, float(sys.argv[2]) - time.time())); print(len(s.list_runs()))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, url, str(start_at)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(10)
    ]
    results = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 10, [e.decode()[-300:] for _, e in results]
    assert [out.decode().strip() for out, _ in results] == ["0"] * 10


def test_cli_lists_and_shows_runs(sqlite_store_url: str) -> None:
    store = Store(sqlite_store_url)
    row = _run_row("cli-fn")
    store.insert_runs([row])

    def cli(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "celeryflow.cli", *args, "--store", sqlite_store_url],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert f"{row['id']}  cli-fn    queued" in cli("runs")
    assert (
        cli("runs", "--status", "completed").split()
        == "RUN FUNCTION STATUS EVENT CREATED DURATION ERROR".split()
    )
    assert f'"id": "{row["id"]}"' in cli("run", "--json", str(row["id"]))


@pytest.mark.parametrize("store_url", ["postgres", "mariadb"], indirect=True)
def test_a_connection_the_server_dropped_is_replaced_before_use(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool pings a connection idle for over PING_AFTER_IDLE before handing it out
    (instead of pinging on every checkout), so a server restart or an idle-connection
    timeout is never seen by the caller."""
    from celeryflow.store import database

    store = Store(store_url, auto_migrate=True)
    store.insert_runs([_run_row()])  # the pool now holds one open connection
    postgres = store.dialect == "postgresql"
    with store.engine.connect() as conn:
        session_id = conn.exec_driver_sql(
            "SELECT pg_backend_pid()" if postgres else "SELECT CONNECTION_ID()"
        ).scalar()
    admin = sa.create_engine(store_url, poolclass=sa.NullPool)
    with admin.connect() as conn:
        if postgres:
            conn.exec_driver_sql(f"SELECT pg_terminate_backend({int(session_id)})")
        else:
            conn.exec_driver_sql(f"KILL {int(session_id)}")
    admin.dispose()
    monkeypatch.setattr(database, "PING_AFTER_IDLE", 0.0)  # as if idle for long
    row = _run_row()
    store.insert_runs([row])
    assert store.get_run(str(row["id"])).status == RunStatus.QUEUED
    store.engine.dispose()


@pytest.mark.parametrize("store_url", ["sqlite", "postgres"], indirect=True)
def test_the_sparse_run_indexes_are_partial_where_the_database_allows(store_url: str) -> None:
    """compare_metadata does not look at index predicates: check them here."""
    store = Store(store_url, auto_migrate=True)
    expected = {
        "ix_cf_runs_due_at": "due_at",
        "ix_cf_runs_parent": "parent_run_id",
        "ix_cf_runs_slot1": "concurrency_key1",
        "ix_cf_runs_slot2": "concurrency_key2",
    }
    with store.engine.connect() as conn:
        if store.dialect == "postgresql":
            rows = conn.exec_driver_sql(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'cf_runs'"
            )
        else:
            rows = conn.exec_driver_sql(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'cf_runs'"
            )
        definitions = {name: " ".join(str(sql).split()) for name, sql in rows}
    for name, column in expected.items():
        assert f"WHERE ({column} IS NOT NULL)" in definitions[name] or (
            f"WHERE {column} IS NOT NULL" in definitions[name]
        ), definitions[name]
    assert "WHERE" not in definitions["ix_cf_runs_status_created"]
