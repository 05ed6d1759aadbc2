"""Deploys: runs of a function no worker has carry the reason, are logged once per
run per process, can still be taken by a worker that has the function, and can be
retired by function (API and CLI)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from celery import Celery
from flowkit import make_flow
from services import Stack

from celeryflow import ConfigError, Event, Flow, event
from celeryflow.runs import RunStatus
from celeryflow.testing import wait_for, wait_for_run, worker

CLI = str(Path(sys.executable).with_name("celeryflow"))


def sender_and_stripped_worker(stack: Stack) -> tuple[Flow, Flow]:
    """Two Flows on one store and queue: the new code (with the function ``moved``)
    and an old worker's, without it."""
    new = make_flow(stack)

    @new.function(id="moved", trigger=event("deploy/moved"))
    def moved(ctx: object) -> str:
        ctx.step.sleep("nap", "1s")  # type: ignore[attr-defined]
        return "done"

    old = make_flow(stack, reconcile_interval="200ms", redeliver_after="1s")
    return new, old


@pytest.mark.parametrize("stack", ["embedded", "redis-postgres"], indirect=True)
def test_a_run_no_worker_has_records_why_and_logs_once(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    new, old = sender_and_stripped_worker(stack)
    [event_id] = new.send(Event(name="deploy/moved"))
    run_id = new.list_runs(event_id=event_id)[0].id

    def noted() -> list[logging.LogRecord]:
        return [r for r in caplog.records if run_id in r.getMessage()]

    with caplog.at_level(logging.DEBUG, logger="celeryflow.engine"), worker(old):
        run = wait_for(
            lambda: (r := old.get_run(run_id)).error and r,
            timeout=60,
            what="the reason on the run",
        )
        # redelivered by the reconciler again and again: still one ERROR
        wait_for(lambda: len(noted()) >= 3, timeout=60, what="three deliveries")
    assert run.status is RunStatus.QUEUED
    assert run.error is not None and run.error["type"] == "FunctionNotRegistered"
    assert "'moved' is not registered in this worker" in run.error["message"]
    assert "cancel --function moved" in run.error["message"]
    errors = [r for r in noted() if r.levelno >= logging.WARNING]
    assert len(errors) == 1, [r.getMessage() for r in noted()]

    # the new code's worker takes it; its claim clears the note
    with worker(new):
        sleeping = wait_for_run(new, run_id, status={"sleeping", "completed"}, timeout=60)
        assert sleeping.error is None
        done = wait_for_run(new, run_id, timeout=60)
    assert done.status is RunStatus.COMPLETED
    assert done.error is None


@pytest.mark.parametrize("stack", ["embedded", "redis-postgres"], indirect=True)
def test_cancel_runs_by_function(stack: Stack) -> None:
    flow = make_flow(stack)

    @flow.function(id="gone", trigger=event("deploy/gone"))
    def gone(ctx: object) -> None:
        return None

    @flow.function(id="kept", trigger=event("deploy/kept"))
    def kept(ctx: object) -> None:
        return None

    flow.send([Event(name="deploy/gone", data={"n": n}) for n in range(3)])
    flow.send(Event(name="deploy/kept"))
    # no worker: every run is queued
    assert flow.cancel_runs(function_id="gone", dry_run=True) == 3
    assert flow.cancel_runs(function_id="gone", status="sleeping") == 0
    with pytest.raises(ConfigError, match="cancelled only from"):
        flow.cancel_runs(function_id="gone", status="completed")
    assert flow.cancel_runs(function_id="gone", status=["queued", "waiting"]) == 3
    assert {r.status for r in flow.list_runs(function_id="gone")} == {RunStatus.CANCELLED}
    assert flow.list_runs(function_id="kept")[0].status is RunStatus.QUEUED
    assert flow.cancel_runs(function_id="gone") == 0


def cli(*args: str, store: str, cwd: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CELERYFLOW_STORE", "CELERY_APP")}
    return subprocess.run(
        [CLI, "--store", store, *args],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_cancel_by_function_and_by_id(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/store.db"
    flow = Flow(Celery("cli-cancel", broker=f"celeryflow+sqlite:///{tmp_path}/b.db"), store=store)

    @flow.function(id="gone", trigger=event("deploy/gone"))
    def gone(ctx: object) -> None:
        return None

    flow.send([Event(name="deploy/gone", data={"n": n}) for n in range(4)])
    ids = sorted(r.id for r in flow.list_runs(function_id="gone"))

    counted = cli("cancel", "--function", "gone", "--dry-run", store=store, cwd=tmp_path)
    assert counted.returncode == 0, counted.stderr
    assert counted.stdout.startswith("4 run(s) of 'gone'")

    declined = cli("cancel", "--function", "gone", store=store, cwd=tmp_path, stdin="n\n")
    assert declined.returncode == 1
    assert "Traceback" not in declined.stderr
    assert flow.cancel_runs(function_id="gone", dry_run=True) == 4

    one = cli("cancel", ids[0], store=store, cwd=tmp_path)
    assert one.stdout.strip() == f"cancelled run {ids[0]}"
    again = cli("cancel", ids[0], store=store, cwd=tmp_path)
    assert again.stdout.strip() == f"run {ids[0]} had already ended (cancelled)"

    confirmed = cli("cancel", "--function", "gone", "--yes", store=store, cwd=tmp_path)
    assert confirmed.stdout.strip() == "cancelled 3 run(s) of 'gone'"
    assert {r.status for r in flow.list_runs(function_id="gone")} == {RunStatus.CANCELLED}
