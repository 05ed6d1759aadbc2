"""Building a Celery app + Flow on a test stack, shared by the engine tests."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from celery import Celery
from services import Stack

from celeryflow import Flow

# Short timings so retries and reconciliation happen within a test's patience.
FAST = {"retry_base": "50ms", "reconcile_interval": "1s", "redeliver_after": "5s"}


def make_flow(stack: Stack, **settings: Any) -> Flow:
    app = Celery(f"t-{stack.queue}", broker=stack.broker_url)
    app.conf.task_default_queue = stack.queue
    app.conf.broker_connection_retry_on_startup = True
    app.conf.worker_hijack_root_logger = False
    # py-amqp heartbeats make Celery's in-thread test worker take ~10 s to stop.
    app.conf.broker_heartbeat = 0
    return Flow(app, store=stack.store_url, auto_migrate=True, **{**FAST, **settings})


APPS = Path(__file__).parent / "apps"


def apps_env(**extra: str) -> dict[str, str]:
    """The environment of a worker subprocess whose ``-A`` app lives in tests/apps."""
    path = f"{APPS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    return {**os.environ, "PYTHONPATH": path, **extra}


@contextmanager
def worker_process(
    command: list[str], env: dict[str, str], cwd: Path, log: Path, *, tail: int = 4000
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` (a ``celery worker``) with its output in ``log``; it gets SIGTERM
    at the end, and a failing block prints the log's last ``tail`` characters. Yields
    the process (for a test that signals it or reads its pid)."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    except BaseException:
        print(f"--- {log.name} ---\n{log.read_text(errors='replace')[-tail:]}")
        raise
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
