"""A worker whose log format shows the run of each record, on the embedded default
(no broker named: the SQLite transport beside the store). Env: CF_STORE."""

from __future__ import annotations

import logging
import os

from celery import Celery

from celeryflow import Flow, event

FORMAT = "[%(levelname)s %(name)s run=%(run_id)s fn=%(function_id)s] %(message)s"

app = Celery("logs_app")
app.conf.worker_log_format = FORMAT
app.conf.worker_task_log_format = FORMAT
# sleeps are woken by the reconciler alone (no ETA message), every second
flow = Flow(app, store=os.environ["CF_STORE"], reconcile_interval="1s", eta_horizon="0s")
myapp = logging.getLogger("myapp")


def note(tag: str) -> str:
    myapp.info("inside the step %s", tag)
    return tag


@flow.function(id="chatty", trigger=event("logs/chatty"))
def chatty(ctx):  # type: ignore[no-untyped-def]
    tag = ctx.event.data["tag"]
    ctx.logger.info("before the nap %s", tag)
    ctx.step.run("note", note, tag)
    ctx.step.sleep("nap", "1s")
    ctx.logger.info("after the nap %s", tag)
    return tag
