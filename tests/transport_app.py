"""A plain Celery app on the embedded SQLite broker, for tests/test_transport_sqlite.py.

Configured by environment so worker subprocesses and the test process share it:
``TRANSPORT_BROKER`` (broker URL), ``TRANSPORT_RESULTS`` (an SQLite file where tasks
record each execution), ``TRANSPORT_OPTIONS`` (JSON broker_transport_options) and
``TRANSPORT_BEAT`` (set: add a beat entry every 0.5 s).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time

from celery import Celery

import celeryflow.transport.kombu_sqlite  # noqa: F401  (registers celeryflow+sqlite://)

app = Celery("transport_app", broker=os.environ["TRANSPORT_BROKER"])
app.conf.update(
    broker_transport_options=json.loads(os.environ.get("TRANSPORT_OPTIONS") or "{}"),
    broker_connection_retry_on_startup=True,
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    beat_schedule_filename=os.path.join(os.getcwd(), "beat-schedule"),
)
if os.environ.get("TRANSPORT_BEAT"):
    app.conf.beat_schedule = {"tick": {"task": "t.record", "schedule": 0.5, "args": ("beat",)}}


@app.task(name="t.record")
def record(key: str, sent: float | None = None, sleep: float = 0.0) -> None:
    started = time.time()
    worker = os.environ.get("TRANSPORT_WORKER", f"{socket.gethostname()}:{os.getpid()}")
    with sqlite3.connect(os.environ["TRANSPORT_RESULTS"], timeout=30) as conn:
        conn.execute("INSERT INTO runs VALUES (?, ?, ?, ?)", (key, worker, started, sent))
    conn.close()
    time.sleep(sleep)
