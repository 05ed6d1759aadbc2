"""kill -9 of the worker process executing a step: the run completes on another
worker within 60 s (default settings), and finished steps are not run again."""

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

import pytest
from services import Stack

from celeryflow import Event, Flow, RunStatus
from celeryflow.testing import wait_for, wait_for_run

APPS = Path(__file__).parent / "apps"


@contextmanager
def celery_worker(
    stack: Stack, journal: Path, name: str, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "PYTHONPATH": f"{APPS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "CF_BROKER": stack.broker_url,
        "CF_STORE": stack.store_url,
        "CF_QUEUE": stack.queue,
        "CF_JOURNAL": str(journal),
    }
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "crash_app",
        "worker",
        "--pool",
        "solo",
        "-n",
        f"{name}@%h",
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
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_kill_9_mid_step_resumes_on_another_worker(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = tmp_path / "journal.txt"
    journal.touch()
    for key, value in {
        "CF_BROKER": stack.broker_url,
        "CF_STORE": stack.store_url,
        "CF_QUEUE": stack.queue,
        "CF_JOURNAL": str(journal),
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.syspath_prepend(str(APPS))
    sys.modules.pop("crash_app", None)
    crash_app = importlib.import_module("crash_app")
    flow: Flow = crash_app.flow
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    try:
        with celery_worker(stack, journal, "a", logs[0]) as worker_a:
            [event_id] = flow.send(Event(name="t/crash"))
            wait_for(lambda: "two-start" in journal.read_text(), timeout=30, what="step two")
            os.kill(worker_a.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            worker_a.wait(10)
        with celery_worker(stack, journal, "b", logs[1]):
            run = wait_for_run(flow, event_id=event_id, timeout=60)
            recovered_in = time.monotonic() - killed_at
    except BaseException:
        for log in logs:
            if log.exists():
                print(f"--- {log.name} ---\n{log.read_text()[-4000:]}")
        raise
    sys.modules.pop("crash_app", None)

    assert run.status == RunStatus.COMPLETED, run.error
    assert recovered_in < 60
    lines = journal.read_text().split()
    names = lines[0::2]
    assert names == ["one", "two-start", "two-start", "two-end", "three"], lines
    pids = lines[1::2]
    assert pids[0] == pids[1] != pids[2] == pids[4]  # resumed in the other worker
    assert [s.id for s in run.steps] == ["one", "two", "three"]
