"""Many short runs for competing-worker tests. Env: CF_BROKER, CF_STORE, CF_QUEUE,
CF_JOURNAL (each step execution appends "run_id step pid")."""

from __future__ import annotations

import os

from celery import Celery

from celeryflow import Flow, event

app = Celery("many_app", broker=os.environ["CF_BROKER"])
app.conf.task_default_queue = os.environ["CF_QUEUE"]
app.conf.broker_connection_retry_on_startup = True
flow = Flow(app, store=os.environ["CF_STORE"], auto_migrate=True, retry_base="50ms")
JOURNAL = os.environ["CF_JOURNAL"]


def note(run_id: str, step: str) -> str:
    # O_APPEND writes of one short line are atomic between processes.
    with open(JOURNAL, "a") as handle:
        handle.write(f"{run_id} {step} {os.getpid()}\n")
    return step


@flow.function(id="three-steps", trigger=event("t/many"))
def three_steps(ctx):  # type: ignore[no-untyped-def]
    for name in ("a", "b", "c"):
        ctx.step.run(name, note, ctx.run_id, name)
    ctx.step.sleep("nap", "300ms")
    ctx.step.run("d", note, ctx.run_id, "d")
    return ctx.event.data["n"]
