"""A cron function for beat tests. Env: CF_BROKER, CF_STORE, CF_QUEUE."""

from __future__ import annotations

import os

from celery import Celery

from celeryflow import Flow, cron

app = Celery("cron_app", broker=os.environ["CF_BROKER"])
app.conf.task_default_queue = os.environ["CF_QUEUE"]
app.conf.broker_connection_retry_on_startup = True
flow = Flow(app, store=os.environ["CF_STORE"], auto_migrate=True, tick_interval="250ms")


@flow.function(id="every-two-seconds", trigger=cron("* * * * * */2"))
def every_two_seconds(ctx):  # type: ignore[no-untyped-def]
    return ctx.event.data["scheduled_at"]
