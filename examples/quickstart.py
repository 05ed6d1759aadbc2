"""The quickstart: a durable onboarding function on the embedded default.

No service needed: the store is SQLite (celeryflow.db) and, because the Celery app
names no broker, the broker is celeryflow's SQLite transport beside it.

    python examples/quickstart.py       # starts a worker, sends an event, watches the run
    celery -A quickstart worker         # (from examples/) what you would run yourself
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from celery import Celery

from celeryflow import Context, Event, Flow, event

app = Celery("quickstart")  # your existing Celery app; no broker given -> embedded
flow = Flow(app)  # store: $CELERYFLOW_STORE, else sqlite:///celeryflow.db


def send_email(to: str, template: str) -> dict[str, str]:
    print(f"    (worker) sending {template!r} to {to}", flush=True)
    return {"to": to, "template": template, "status": "sent"}


@flow.function(id="welcome", trigger=event("user/signed_up", if_="event.data.plan != 'test'"))
def welcome(ctx: Context) -> dict[str, str]:
    email = ctx.event.data["email"]
    ctx.step.run("send-welcome", send_email, email, "welcome")
    ctx.step.sleep("wait", os.environ.get("QUICKSTART_SLEEP", "5s"))  # "3 days" in real life
    ctx.step.run("send-tips", send_email, email, "tips")
    return {"email": email, "done": "yes"}


def main() -> int:
    here = Path(__file__).resolve().parent
    os.chdir(here)  # the store and broker files live next to this example
    for stale in here.glob("celeryflow*.db*"):
        stale.unlink()
    log = here / "quickstart-worker.log"
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "quickstart",
        "worker",
        "--loglevel",
        "INFO",
        "--concurrency",
        "2",
    ]
    print(f"$ {' '.join(command[2:])}   (log: {log.name})")
    with open(log, "wb") as out:
        worker = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=here)
    try:
        [event_id] = flow.send(
            Event(name="user/signed_up", data={"email": "ada@example.com", "plan": "pro"})
        )
        print(f"sent user/signed_up -> event {event_id}")
        seen = ""
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            runs = flow.list_runs(event_id=event_id)
            run = flow.get_run(runs[0].id) if runs else None
            if run is not None and run.status.value != seen:
                seen = run.status.value
                extra = (
                    f" until {run.wake_at:%H:%M:%S}" if run.wake_at and seen == "sleeping" else ""
                )
                print(f"run {run.id}: {seen}{extra}")
            if run is not None and run.status.value in ("completed", "failed", "cancelled"):
                break
            time.sleep(0.1)
        else:
            print("the run did not finish in 90 s; see the worker log")
            return 1
        print(f"output: {run.output}")
        for step in run.steps:
            took = (
                (step.ended_at - step.started_at).total_seconds()
                if step.ended_at and step.started_at
                else 0
            )
            print(
                f"  step {step.id:<13} {step.kind:<6} {step.status:<9} {took:6.3f}s  {step.output}"
            )
        return 0 if run.status.value == "completed" else 1
    finally:
        worker.terminate()
        worker.wait(30)


if __name__ == "__main__":
    sys.exit(main())
