"""Building a Celery app + Flow on a test stack, shared by the engine tests."""

from __future__ import annotations

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
