"""Two worker processes (prefork, -c 2 each) competing for the same runs: every step
of every run executes exactly once, on the embedded default and on the services."""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections import Counter
from pathlib import Path

import pytest
from flowkit import APPS, apps_env, worker_process
from services import Stack

from celeryflow import Event, Flow
from celeryflow.testing import wait_for

RUNS = 60


@pytest.mark.parametrize("stack", ["embedded", "redis-postgres"], indirect=True)
def test_competing_worker_processes_run_each_step_once(
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
    sys.modules.pop("many_app", None)
    flow: Flow = importlib.import_module("many_app").flow
    flow.store.migrate()  # before two workers race to first use

    with contextlib.ExitStack() as workers:
        for i in range(2):
            command = [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "many_app",
                "worker",
                "-c",
                "2",
                "--pool",
                "prefork",
                "-n",
                f"w{i}@%h",
                "--without-mingle",
                "--without-gossip",
            ]
            log = tmp_path / f"w{i}.log"
            workers.enter_context(worker_process(command, apps_env(**env), tmp_path, log))
        event_ids = flow.send([Event(name="t/many", data={"n": n}) for n in range(RUNS)])
        wait_for(
            lambda: len(flow.list_runs(status="completed", limit=RUNS + 1)) == RUNS,
            timeout=120,
            interval=0.2,
            what=f"{RUNS} runs to complete",
        )

    entries = [line.split() for line in journal.read_text().splitlines()]
    per_step = Counter((run_id, step) for run_id, step, _ in entries)
    assert len(per_step) == RUNS * 4
    assert set(per_step.values()) == {1}, [k for k, v in per_step.items() if v > 1]
    assert len({pid for _, _, pid in entries}) >= 2  # the work really was shared
    outputs = sorted(flow.get_run(flow.list_runs(event_id=e)[0].id).output for e in event_ids)
    assert outputs == list(range(RUNS))
