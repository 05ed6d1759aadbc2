"""Recovery does not wait behind the backlog, and a backlog is not re-rung.

A run left ``running`` by a killed executor is rung on the recovery queue, which
every worker consuming the flow's queue also consumes, so it resumes within lease +
reconcile interval + 10 s however many runs are queued. Queued runs whose doorbell is
still in the broker are not rung again while they wait (issue 12, item 7)."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flowkit import make_flow
from services import Stack

from celeryflow import Event, Flow, RunStatus, event
from celeryflow.store.tables import runs
from celeryflow.testing import wait_for, wait_for_run, worker

APPS = Path(__file__).parent / "apps"
BACKLOG = 200
LEASE, RECONCILE = 3.0, 1.0  # recovery_app's settings


@contextmanager
def prefork_worker(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "recovery_app",
        "worker",
        "--pool",
        "prefork",
        "-c",
        "2",
        "-n",
        "recovery@%h",
        "--loglevel",
        "INFO",
        "--without-mingle",
        "--without-gossip",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGQUIT)  # cold: the backlog is left in the broker
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def count(flow: Flow, function_id: str, status: RunStatus) -> int:
    with flow.store.engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count()).where(
                    runs.c.function_id == function_id, runs.c.status == status.value
                )
            ).scalar_one()
        )


def journal_lines(journal: Path) -> list[str]:
    return journal.read_text().split()[0::2]


@pytest.mark.parametrize("stack", ["embedded", "redis-postgres"], indirect=True)
def test_killed_run_resumes_ahead_of_the_backlog(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = tmp_path / "journal.txt"
    journal.touch()
    env = {
        "CF_BROKER": stack.broker_url,
        "CF_STORE": stack.store_url,
        "CF_QUEUE": stack.queue,
        "CF_JOURNAL": str(journal),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.syspath_prepend(str(APPS))
    sys.modules.pop("recovery_app", None)
    flow: Flow = importlib.import_module("recovery_app").flow
    env = {**os.environ, "PYTHONPATH": f"{APPS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    log = tmp_path / "worker.log"
    try:
        with prefork_worker(env, log):
            [victim] = flow.send(Event(name="t/victim"))
            wait_for(lambda: "two-start" in journal_lines(journal), timeout=60, what="step two")
            flow.send([Event(name="t/backlog") for _ in range(BACKLOG)])
            executor = int(journal.read_text().split()[-1])
            os.kill(executor, signal.SIGKILL)
            killed_at = time.monotonic()
            wait_for(
                lambda: "two-end" in journal_lines(journal), timeout=90, what="the victim resumed"
            )
            recovered_in = time.monotonic() - killed_at
            waiting = count(flow, "backlog", RunStatus.QUEUED)
            run = wait_for_run(flow, event_id=victim, timeout=30)
    except BaseException:
        print(f"--- worker log ---\n{log.read_text()[-6000:]}")
        raise
    finally:
        sys.modules.pop("recovery_app", None)
    assert run.status == RunStatus.COMPLETED, run.error
    assert journal_lines(journal) == ["one", "two-start", "two-start", "two-end"]
    print(f"recovered in {recovered_in:.1f} s with {waiting} runs still queued")
    assert recovered_in < LEASE + RECONCILE + 10, log.read_text()[-8000:]
    assert waiting > BACKLOG // 4  # the backlog was still there: recovery did not wait


def note_step(seconds: float) -> Any:
    return time.sleep(seconds)


def test_a_backlog_waiting_in_the_broker_is_not_rung_again(tmp_path: Path) -> None:
    from services import make_stack

    with make_stack("embedded", tmp_path) as stack:
        flow = make_flow(stack, redeliver_after="1s")

        @flow.function(id="queued", trigger=event("t/queued"))
        def queued(ctx):  # type: ignore[no-untyped-def]
            ctx.step.run("work", note_step, 0.05)

        n = 150
        flow.send([Event(name="t/queued") for _ in range(n)])
        with worker(flow, concurrency=1):
            wait_for(
                lambda: count(flow, "queued", RunStatus.COMPLETED) == n,
                timeout=120,
                what="the backlog drained",
            )
        with flow.store.engine.connect() as conn:
            rings = int(conn.execute(sa.select(sa.func.sum(runs.c.dispatches))).scalar_one())
    print(f"{n} queued runs: {n} doorbells sent by send(), {rings} by the reconciler")
    assert rings <= n // 10
