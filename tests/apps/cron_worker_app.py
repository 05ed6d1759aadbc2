"""A cron function for workers started without beat: on the embedded default (no
broker named: the SQLite transport beside the store) unless CF_BROKER is set.
Env: CF_STORE, optionally CF_BROKER and CF_QUEUE."""

from __future__ import annotations

import os

from celery import Celery

from celeryflow import Flow, cron

app = Celery("cron_worker_app", broker=os.environ.get("CF_BROKER"))
if os.environ.get("CF_QUEUE"):
    app.conf.task_default_queue = os.environ["CF_QUEUE"]
app.conf.broker_connection_retry_on_startup = True
flow = Flow(app, store=os.environ["CF_STORE"])


@flow.function(id="every-two-seconds", trigger=cron("* * * * * */2"))
def every_two_seconds(ctx):  # type: ignore[no-untyped-def]
    return ctx.event.data["scheduled_at"]
