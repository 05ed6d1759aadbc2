"""The embedded SQLite broker (celeryflow.transport.kombu_sqlite) under real Celery workers.

Workers are ``python -m celery -A transport_app worker`` subprocesses on a temp broker
file; tasks record each execution in another SQLite file that the test reads. Worker
logs are printed at teardown (pytest shows them when a test fails).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kombu
import pytest
from celery import Celery

from celeryflow.transport import kombu_sqlite

pytestmark = pytest.mark.timeout(60)

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Worker:
    def __init__(self, env: Env, name: str, args: tuple[str, ...], options: dict[str, Any]):
        self.name = name
        self.log = env.tmp / f"{name}.log"
        environ = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT)]),
            "TRANSPORT_BROKER": env.broker,
            "TRANSPORT_RESULTS": str(env.results),
            "TRANSPORT_OPTIONS": json.dumps(options),
            "TRANSPORT_WORKER": name,
            "TRANSPORT_BEAT": "1" if "-B" in args else "",
        }
        command = [sys.executable, "-m", "celery", "-A", "transport_app", "worker"]
        command += ["-n", f"{name}@%h", "-l", "INFO", *args]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                command,
                cwd=env.tmp,
                env=environ,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # so a kill reaches the pool children too
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 20) -> None:
        def ready() -> bool:
            assert self.proc.poll() is None, f"{self.name} exited early:\n{self.text()}"
            return " ready." in self.text()

        wait_for(ready, timeout, f"{self.name} to be ready")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """SIGKILL the whole group (pool children too); other signals to the main process
        only (a SIGTERMed pool child can die holding the pool's queue lock)."""
        try:
            if sig == signal.SIGKILL:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.kill(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGUSR1)  # Celery prints its stacks into the log
                time.sleep(0.5)
        self.kill()  # whatever is left, pool children included


class Env:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.db = tmp / "broker.db"
        self.broker = f"celeryflow+sqlite:///{self.db}"  # absolute: four slashes
        self.results = tmp / "results.db"
        # Created before any worker starts: a fresh file's first writes race.
        with sqlite3.connect(self.results) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("CREATE TABLE runs (key TEXT, worker TEXT, started REAL, sent REAL)")
        self.workers: list[Worker] = []
        self.apps: list[Celery] = []

    def worker(self, name: str, *args: str, **options: Any) -> Worker:
        worker = Worker(self, name, args, options)
        self.workers.append(worker)
        return worker

    def app(self, **options: Any) -> Celery:
        app = Celery("t", broker=self.broker)
        app.conf.broker_transport_options = options
        self.apps.append(app)
        return app

    def runs(self) -> list[dict[str, Any]]:
        conn = sqlite3.connect(self.results, timeout=30)
        try:
            rows = conn.execute("SELECT key, worker, started, sent FROM runs").fetchall()
        finally:
            conn.close()
        return [dict(zip(("key", "worker", "started", "sent"), r, strict=True)) for r in rows]

    def broker_rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.db, timeout=30)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    env = Env(tmp_path)
    yield env
    for app in env.apps:
        app.close()
    for worker in env.workers:  # all at once: a warm shutdown takes a few seconds
        worker.kill(signal.SIGTERM)
    for worker in env.workers:
        worker.stop()
    for worker in env.workers:
        print(f"===== {worker.name} log =====\n{worker.text()}")


def test_url_forms_options_and_alias(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kombu_sqlite.register()
    kombu_sqlite.register()
    assert kombu.transport.TRANSPORT_ALIASES["celeryflow"].endswith("kombu_sqlite:Transport")
    monkeypatch.chdir(tmp_path)
    with kombu.Connection("celeryflow+sqlite:///rel.db?polling_interval=0.25") as conn:
        assert conn.transport.options.path == str(tmp_path / "rel.db")
        assert conn.transport.polling_interval == 0.25
        conn.connect()
    with kombu.Connection(
        f"celeryflow+sqlite:///{tmp_path}/abs.db",
        transport_options={"polling_interval": 0.05, "heartbeat_timeout": 30},
    ) as conn:
        assert conn.transport.options.path == str(tmp_path / "abs.db")
        assert conn.transport.polling_interval == 0.05
        assert conn.transport.options.heartbeat_timeout == 30
        conn.connect()
    with kombu.Connection(f"celeryflow+sqlite:///{tmp_path}/d.db") as conn:
        assert conn.transport.polling_interval == 0.1  # default
    tables = sqlite3.connect(tmp_path / "abs.db").execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    )
    assert {name for (name,) in tables} == {
        "cf_broker_message",
        "cf_broker_binding",
        "cf_broker_consumer",
    }


def test_ack_requeue_and_close_return_rows(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    with kombu.Connection(f"celeryflow+sqlite:///{db}") as conn:
        queue = conn.SimpleQueue("q")
        for i in range(3):
            queue.put({"i": i})
        first = queue.get(timeout=1)
        first.ack()
        second = queue.get(timeout=1)
        second.requeue()
        again = queue.get(timeout=1)
        assert again.payload == second.payload == {"i": 1}
        queue.get(timeout=1)  # held unacked, as a worker holds an ETA message
        queue.close()  # a graceful close gives both back, without copies
    rows = sqlite3.connect(db).execute("SELECT payload, reserved_by FROM cf_broker_message")
    bodies = [(json.loads(base64.b64decode(json.loads(p)["body"])), r) for p, r in rows]
    assert sorted(bodies, key=str) == [({"i": 1}, None), ({"i": 2}, None)]


def _payloads(db: Path) -> list[str]:
    return [p for (p,) in sqlite3.connect(db).execute("SELECT payload FROM cf_broker_message")]


def test_consumer_judged_dead_while_alive_rejoins_and_keeps_its_message(tmp_path: Path) -> None:
    db_path = tmp_path / "b.db"
    options = {"heartbeat_interval": 0.2, "heartbeat_timeout": 1.0}
    with kombu.Connection(f"celeryflow+sqlite:///{db_path}", transport_options=options) as conn:
        queue = conn.SimpleQueue("q")
        queue.put({"x": 1})
        held = queue.get(timeout=1)
        db = sqlite3.connect(db_path, isolation_level=None)
        ((me,),) = db.execute("SELECT id FROM cf_broker_consumer").fetchall()
        # What another process's sweep does when our heartbeat looks stale (a long
        # freeze): the message is handed back and our consumer row removed.
        db.execute("UPDATE cf_broker_message SET reserved_by = NULL")
        db.execute("DELETE FROM cf_broker_consumer")
        wait_for(
            lambda: db.execute("SELECT reserved_by FROM cf_broker_message").fetchall() == [(me,)],
            5,
            "the consumer to rejoin and take its held message back",
        )
        assert db.execute("SELECT id FROM cf_broker_consumer").fetchall() == [(me,)]
        held.ack()
        assert db.execute("SELECT count(*) FROM cf_broker_message").fetchall() == [(0,)]
        queue.close()


def test_concurrent_first_open_of_a_fresh_file(tmp_path: Path) -> None:
    code = (
        "import sys, kombu, celeryflow.transport.kombu_sqlite\n"
        "with kombu.Connection(sys.argv[1]) as c:\n"
        "    c.SimpleQueue('q').put({'pid': 1})\n"
    )
    url = f"celeryflow+sqlite:///{tmp_path}/fresh.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen([sys.executable, "-c", code, url], env=env, stderr=subprocess.PIPE)
        for _ in range(8)
    ]
    errors = [p.communicate(timeout=30)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, errors
    assert len(_payloads(tmp_path / "fresh.db")) == 8


def test_two_workers_exactly_once_and_no_growth(env: Env) -> None:
    # Both start at once on a file that does not exist yet.
    workers = [env.worker(name, "-c", "2") for name in ("w1", "w2")]
    for worker in workers:
        worker.wait_ready()
    app = env.app()
    sizes = []
    for batch in range(2):
        keys = [f"{batch}-{i}" for i in range(300)]
        for key in keys:
            app.send_task("t.record", (key,))
        wait_for(lambda n=(batch + 1) * 300: len(env.runs()) >= n, 40, "all tasks")
        wait_for(lambda: not env.broker_rows("SELECT 1 FROM cf_broker_message"), 10, "acks")
        sizes.append(env.db.stat().st_size)
    runs = env.runs()
    counts = Counter(run["key"] for run in runs)
    assert len(counts) == 600 and set(counts.values()) == {1}, counts.most_common(3)
    assert {run["worker"] for run in runs} == {"w1", "w2"}
    # Acked rows are deleted and their pages reused: the second batch adds ~nothing.
    assert sizes[1] <= sizes[0] * 1.2 + 64 * 1024, sizes
    for worker in workers:
        assert "Traceback" not in worker.text()


def test_pickup_latency_and_countdown(env: Env) -> None:
    env.worker("w1", "-c", "2").wait_ready()
    app = env.app()
    for i in range(20):
        app.send_task("t.record", (f"now-{i}",), kwargs={"sent": time.time()})
        time.sleep(0.03 + (i % 7) * 0.02)  # spread sends over the polling phase
    sent = time.time()
    for i in range(3):
        app.send_task("t.record", (f"eta-{i}",), kwargs={"sent": sent}, countdown=1.5)
    wait_for(lambda: len(env.runs()) >= 23, 20, "all tasks")
    runs = env.runs()
    delays = [r["started"] - r["sent"] for r in runs if r["key"].startswith("now")]
    late = [r["started"] - (r["sent"] + 1.5) for r in runs if r["key"].startswith("eta")]
    print(f"pick-up median {statistics.median(delays):.3f}s max {max(delays):.3f}s")
    print(f"countdown lateness {[round(x, 3) for x in late]}")
    assert statistics.median(delays) < 0.5
    assert all(-0.05 < x < 0.5 for x in late), late


def test_sigkill_holder_gives_back_prefetched_and_eta(env: Env) -> None:
    options = {"heartbeat_interval": 0.3, "heartbeat_timeout": 2.0}
    holder = env.worker("holder", "-P", "threads", "-c", "1", **options)
    holder.wait_ready()
    app = env.app(**options)
    eta = time.time() + 9
    for i in range(3):
        app.send_task("t.record", (f"eta-{i}",), kwargs={"sent": eta - 9}, eta=_utc(eta))
    app.send_task("t.record", ("long",), kwargs={"sleep": 60})
    for i in range(2):
        app.send_task("t.record", (f"prefetched-{i}",))

    def reserved() -> int:
        rows = env.broker_rows("SELECT count(*) FROM cf_broker_message WHERE reserved_by > 0")
        return int(rows[0][0])

    # "long" is acked as it starts (Celery's default acks_early); the other 5 are held.
    wait_for(lambda: reserved() == 5 and env.runs(), 10, "the holder to hold 5 messages")
    rescuer = env.worker("rescuer", "-P", "threads", "-c", "2", **options)
    rescuer.wait_ready()
    # Past heartbeat_timeout, a live holder keeps what it holds, however far its ETA.
    time.sleep(options["heartbeat_timeout"] + 0.5)
    assert reserved() == 5
    assert [r["key"] for r in env.runs()] == ["long"]
    holder.kill()
    killed_at = time.time()
    wait_for(lambda: len(env.runs()) >= 6, 20, "the rescuer to run the held messages")
    time.sleep(0.5)  # nothing more may arrive
    runs = [r for r in env.runs() if r["key"] != "long"]
    assert sorted(r["key"] for r in runs) == [
        "eta-0",
        "eta-1",
        "eta-2",
        "prefetched-0",
        "prefetched-1",
    ]
    assert {r["worker"] for r in runs} == {"rescuer"}
    for run in runs:
        if run["key"].startswith("eta"):
            assert eta - 0.05 < run["started"] < eta + 2.0, run
        else:
            assert run["started"] - killed_at < options["heartbeat_timeout"] + 2, run
    wait_for(lambda: not env.broker_rows("SELECT 1 FROM cf_broker_message"), 5, "acks")


def _utc(ts: float) -> Any:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ts, tz=timezone.utc)


def test_warm_shutdown_requeues_held_messages_once(env: Env) -> None:
    worker = env.worker("w1", "-P", "threads", "-c", "1")
    worker.wait_ready()
    app = env.app()
    for i in range(3):
        app.send_task("t.record", (f"eta-{i}",), countdown=60)
    wait_for(
        lambda: len(env.broker_rows("SELECT 1 FROM cf_broker_message WHERE reserved_by > 0")) == 3,
        10,
        "the worker to hold 3 ETA messages",
    )
    worker.kill(signal.SIGTERM)
    worker.proc.wait(15)
    # At once (not after heartbeat_timeout), each message back exactly once.
    rows = env.broker_rows("SELECT reserved_by FROM cf_broker_message")
    assert rows == [(None,)] * 3
    assert env.broker_rows("SELECT * FROM cf_broker_consumer") == []


def test_embedded_beat_and_remote_control(env: Env) -> None:
    worker = env.worker("w1", "-B", "-c", "1", polling_interval=0.05)
    worker.wait_ready()
    wait_for(lambda: len([r for r in env.runs() if r["key"] == "beat"]) >= 2, 15, "beat ticks")
    # Fanout (pidbox) and a direct reply across processes: `celery inspect ping`.
    app = env.app(polling_interval=0.05)
    replies = wait_for(lambda: app.control.ping(timeout=1.0), 10, "a ping reply")
    assert any(name.startswith("w1@") for reply in replies for name in reply), replies
    # The reply queue was deleted with its binding; nothing piles up for dead clients.
    bindings = env.broker_rows("SELECT queue FROM cf_broker_binding")
    assert not [q for (q,) in bindings if "reply" in q], bindings
    assert "Traceback" not in worker.text()
