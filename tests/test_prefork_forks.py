"""The reconciler thread under billiard's re-forks (issue 12): a prefork worker with
``--max-tasks-per-child=1`` forks a new pool child after every task, while the
reconciler thread in the worker's main process rings runs. Exactly one reconciler
runs per worker node, none in a pool child, and no child hangs on a lock the
reconciler held at the fork."""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from celery import Celery
from flowkit import apps_env, worker_process
from kombu import Connection as KombuConnection
from services import Stack

from celeryflow import Event, Flow
from celeryflow.reconciler import ReconcilerThread
from celeryflow.testing import wait_for

RUNS = 20
RECONCILER = "celeryflow-reconciler"


@pytest.mark.parametrize("stack", ["embedded", "redis-postgres"], indirect=True)
def test_max_tasks_per_child_1_one_reconciler_per_node_none_in_children(
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
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "apps"))
    sys.modules.pop("forks_app", None)
    flow: Flow = importlib.import_module("forks_app").flow
    flow.store.migrate()
    log = tmp_path / "worker.log"
    command = [
        sys.executable, "-m", "celery", "-A", "forks_app", "worker", "--pool", "prefork",
        "-c", "2", "--max-tasks-per-child", "1", "-n", "forks@%h", "--loglevel", "INFO",
        "--without-mingle", "--without-gossip",
    ]  # fmt: skip
    try:
        with worker_process(command, apps_env(**env), Path.cwd(), log, tail=6000) as proc:
            flow.send([Event(name="t/forked", data={"n": n}) for n in range(RUNS)])
            wait_for(
                lambda: len(flow.list_runs(status="completed", limit=RUNS + 1)) == RUNS,
                timeout=600,  # a deadline, not a timing: a fork per task, on a loaded machine
                interval=0.2,
                what=f"{RUNS} runs to complete with a new child after every task",
            )
            # The main process's threads, by name: SIGUSR1 makes celery log every
            # thread's name and stack (its "cry" handler).
            before = log.read_text(errors="replace")
            proc.send_signal(signal.SIGUSR1)
            wait_for(
                lambda: "LOCAL VARIABLES" in log.read_text(errors="replace")[len(before) :],
                timeout=30,
                what="the worker's thread dump",
            )
            time.sleep(0.5)  # the dump is written in one go; let it finish
            dump = log.read_text(errors="replace")[len(before) :]
    finally:
        sys.modules.pop("forks_app", None)
    bodies = [line.split() for line in journal.read_text().splitlines()]
    assert len(bodies) >= 2 * RUNS
    children = {pid for _, _, pid, _, _ in bodies}
    assert len(children) > RUNS  # a fresh child for (about) every task
    assert {ppid for _, _, _, ppid, _ in bodies} == {str(proc.pid)}
    for _run, _step, pid, _ppid, names in bodies:
        assert RECONCILER not in names.split(","), f"a reconciler in pool child {pid}"
    main_threads = [line.strip() for line in dump.splitlines()]
    assert main_threads.count(RECONCILER) == 1, dump[:3000]


def test_a_child_forked_while_the_reconciler_reads_a_kombu_property_does_not_hang(
    tmp_path: Path,
) -> None:
    """kombu's cached_property takes one lock per property, shared by every instance,
    on each read (Connection.connection_errors, on every publish). A child forked while
    the reconciler thread held it would wait for it forever: it gets fresh ones."""
    flow = Flow(Celery("forks", broker="memory://"), store=f"sqlite:///{tmp_path}/s.db")
    thread = ReconcilerThread(flow)
    thread.start()
    held, release = threading.Event(), threading.Event()
    lock = vars(KombuConnection)["connection_errors"].lock

    def read_property() -> None:  # as the reconciler thread, mid-publish
        with lock:
            held.set()
            release.wait(30)

    reader = threading.Thread(target=read_property)
    reader.start()
    try:
        assert held.wait(10)
        pid = os.fork()
        if pid == 0:  # the child: the property must be readable
            free = vars(KombuConnection)["connection_errors"].lock.acquire(timeout=5)
            os._exit(0 if free else 3)
        _, status = os.waitpid(pid, 0)
    finally:
        release.set()
        reader.join(10)
        thread.stop()
        thread.join(10)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, "the child hung on the lock"
