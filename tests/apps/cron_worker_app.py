"""A cron function on the embedded default (no broker named: the SQLite transport
beside the store), for workers started without beat. Env: CF_STORE."""

from __future__ import annotations

import os

from celery import Celery

from celeryflow import Flow, cron

app = Celery("cron_worker_app")
flow = Flow(app, store=os.environ["CF_STORE"])


@flow.function(id="every-two-seconds", trigger=cron("* * * * * */2"))
def every_two_seconds(ctx):  # type: ignore[no-untyped-def]
    return ctx.event.data["scheduled_at"]
