"""The general paths, with the store's fast paths off.

On PostgreSQL the commonest writes (a claim, a lone step write, the usual finish, the
usual send) take one-statement fast paths (celeryflow/store/one_statement.py), so the
rest of the suite never exercises the general path there; on SQLite the usual send
and new step rows take fast paths too. ``CELERYFLOW_STORE_FAST_PATHS=0``
(celeryflow/store/capabilities.py) turns them off; here the PostgreSQL tests that go
through the fast paths (and the store's own tests on SQLite) run again with it off, in
a pytest subprocess whose workers inherit it. Chosen files, not the whole suite twice:
the store's claims, fences and dedup, the engine's steps, retries, sleeps and cancels,
waiting and sending events, and flow control (about a minute and a half).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from sqltrace import pg_statements

from celeryflow.durations import utcnow
from celeryflow.events import Event
from celeryflow.planning import new_run_id
from celeryflow.runs import RunStatus
from celeryflow.store import PlannedRun, Store
from celeryflow.store.capabilities import FAST_PATHS_ENV, EventPath

ROOT = Path(__file__).resolve().parent.parent

# the PostgreSQL tests (and the store's on SQLite) run again with the fast paths off
# (the fan-out sends 1,000 events from a step: the general path already)
RERUN = ["tests/test_store.py", "tests/test_engine.py", "tests/test_waiting.py"]
RERUN += ["tests/test_flowcontrol.py", "-k", "(postgres or sqlite) and not fan_out"]


def _run_row() -> dict[str, object]:
    now = utcnow()
    return {
        "id": new_run_id(),
        "function_id": "f",
        "event_id": None,
        "events": '[{"name":"x","data":{},"id":"e","ts":1}]',
        "status": "queued",
        "attempt": 0,
        "fence": 0,
        "dispatches": 0,
        "due_at": now,
        "created_at": now,
    }


@contextmanager
def _statements(store: Store) -> Iterator[list[str]]:
    """The SQL the store sends meanwhile."""
    with pg_statements(store.engine) as sent:
        yield sent


def _send_claim_step_finish(store: Store) -> list[str]:
    """A plain event with one run, its claim, one step and the finish with another:
    each one of the fast paths where they are on. Returns the statements sent."""
    store.migrate()
    row = _run_row()
    ev = Event(name="plain/event", id=new_run_id(), data={}, ts=1)
    now = utcnow()
    with _statements(store) as sent:
        recorded = store.record_events([ev], lambda _e: [PlannedRun(dict(row))], now)
        assert recorded.created == [row["id"]]
        with store.session() as session:
            claim = session.claim(str(row["id"]), "me", now, now + timedelta(minutes=1))
            assert claim is not None
            step = {
                "run_id": row["id"],
                "key": "s",
                "name": "s",
                "position": 0,
                "kind": "run",
                "status": "completed",
                "output": "1",
                "attempts": 1,
                "started_at": now,
                "ended_at": now,
            }
            assert session.save_steps(claim.fence, [(step, True)])
            last = dict(step, key="t", position=1)
            held, _ = session.finish(
                str(row["id"]),
                claim.fence,
                status=RunStatus.COMPLETED,
                now=now,
                output="2",
                writes=[(last, True)],
            )
            assert held
    run = store.get_run(str(row["id"]))
    assert run.status == RunStatus.COMPLETED and run.output == 2
    assert [s.id for s in run.steps] == ["s", "t"]
    return sent


def _one_statement_writes(sent: list[str]) -> list[str]:
    """The fast paths' marks: a data-modifying CTE (the send, the finish), a claim
    that sets synchronous_commit within itself."""
    return [s for s in sent if s.startswith("WITH") or "set_config(" in s]


def test_the_switch_turns_the_fast_paths_off(
    postgres_store_url: str, sqlite_store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = Store(postgres_store_url, auto_migrate=True)
    assert fast.capabilities.one_statement_writes
    assert fast.capabilities.event_path is EventPath.ONE_STATEMENT
    assert fast.capabilities.driver_one_statement_writes
    sent = _send_claim_step_finish(fast)
    assert len(_one_statement_writes(sent)) == 3, sent  # send, claim, finish
    assert not any(s == "BEGIN" or s.startswith("SET LOCAL") for s in sent), sent

    assert Store(sqlite_store_url).capabilities.driver_writes

    monkeypatch.setenv(FAST_PATHS_ENV, "0")
    general = Store(postgres_store_url, auto_migrate=True)
    assert not general.capabilities.one_statement_writes
    assert not general.capabilities.driver_one_statement_writes
    assert general.capabilities.event_path is EventPath.GENERAL
    assert general.capabilities.async_claim  # not a fast path: the general claim's too
    sent = _send_claim_step_finish(general)
    assert _one_statement_writes(sent) == [], sent
    assert "SET LOCAL synchronous_commit TO OFF" in sent
    on_sqlite = Store(sqlite_store_url).capabilities
    assert on_sqlite.event_path is EventPath.GENERAL and not on_sqlite.driver_writes


def test_the_postgresql_tests_pass_on_the_general_paths() -> None:
    env = {**os.environ, FAST_PATHS_ENV: "0"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-n0", "-q", "-p", "no:cacheprovider", *RERUN],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
