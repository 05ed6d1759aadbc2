"""The harness counts what it claims to: a finished step run again, a lost run."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from five_app import FUNCTION
from harness import Scenario


@pytest.fixture(autouse=True)
def _no_results(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CF_FAULTS_RESULTS", raising=False)  # not a scenario's figures


def embedded(tmp_path: Path, runs: int) -> Scenario:
    return Scenario(
        "harness self-check", "embedded", f"celeryflow+sqlite:///{tmp_path}/broker.db",
        f"sqlite:///{tmp_path}/store.db", tmp_path, runs,
    )  # fmt: skip


def test_a_body_after_its_step_ended_counts_as_a_finished_step_rerun(tmp_path: Path) -> None:
    with embedded(tmp_path, 2) as sc:
        sc.worker()
        sc.send()
        clean = sc.finish(timeout=90)
        assert (clean.completed, clean.finished_rerun, clean.lost) == (2, 0, 0), clean.line()
        run = sc.flow.list_runs(function_id=FUNCTION, limit=1)[0]
        with open(sc.ledger, "a") as ledger:  # s1's body once more, after it ended
            ledger.write(f"{run.id} s1 {time.time():.6f} {os.getpid()}\n")
        sc.report.finished_rerun = 0
        again = sc.finish(timeout=10)
    assert again.finished_rerun == 1, again.line()
    assert again.extra_bodies == 1


def test_a_run_that_never_ends_counts_as_lost(tmp_path: Path) -> None:
    with embedded(tmp_path, 3) as sc:
        sc.send()  # no worker
        rep = sc.finish(timeout=2)
    assert (rep.completed, rep.lost) == (0, 3), rep.line()
