"""Faults on the embedded default: SQLite store + the ``celeryflow+sqlite://`` broker
(no server to fault: the faults are the workers' own), with prefork workers."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import Scenario, assert_targets, runs_for
from scenarios import (
    FROZEN_FOR,
    LEASE,
    RECONCILE,
    all_workers_down_while_sleeping,
    check_resume,
    duplicate_deliveries,
    kill_9_under_load,
    worker_frozen_past_lease,
)

full = pytest.mark.faults_full


def scenario(name: str, tmp_path: Path, short: int, **kw: object) -> Scenario:
    return Scenario(
        name, "embedded", f"celeryflow+sqlite:///{tmp_path}/broker.db",
        f"sqlite:///{tmp_path}/store.db", tmp_path, runs_for(short),
        lease=f"{LEASE:g}s", reconcile=f"{RECONCILE:g}s", **kw,  # type: ignore[arg-type]
    )  # fmt: skip


@full  # the short suite has kill -9 on Redis + PostgreSQL, and test_crash.py this stack's
def test_kill_9_of_workers_under_load(tmp_path: Path) -> None:
    with scenario("kill -9 workers", tmp_path, 30) as sc:
        rep = kill_9_under_load(sc)
    assert_targets(rep)
    check_resume(rep)


@full
def test_duplicate_deliveries_x10(tmp_path: Path) -> None:
    with scenario("duplicate deliveries x10", tmp_path, 30) as sc:
        rep = duplicate_deliveries(sc)
    assert rep.extra_bodies == 0, rep.line()
    assert_targets(rep)


@full
def test_all_workers_down_while_runs_sleep(tmp_path: Path) -> None:
    with scenario("all workers down while runs sleep", tmp_path, 30) as sc:
        rep = all_workers_down_while_sleeping(sc)
    assert_targets(rep)


@full
def test_worker_frozen_past_its_lease(tmp_path: Path) -> None:
    with scenario("worker frozen past its lease", tmp_path, 30, step_seconds=0.2) as sc:
        rep = worker_frozen_past_lease(sc, FROZEN_FOR)
    assert_targets(rep)
    assert rep.resume_s is not None and rep.resume_s < FROZEN_FOR, rep.line()
