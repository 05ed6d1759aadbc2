"""An onboarding drip: welcome email now, tips on day 3, a check-in on day 7, and an
upgrade offer on day 14 unless the user upgraded meanwhile.

It shows long sleeps that hold no worker (``step.sleep``) and a wait for another event
(``step.wait_for_event`` matched on ``data.user_id``) that ends the run early when the
user upgrades. ``lookback`` makes an upgrade sent while the run was still asleep count
too (without it, as in Inngest, only events after the wait began count).

No service needed (embedded default: a SQLite store and broker in a temporary directory):

    python examples/onboarding_drip.py            # a "day" lasts 1 s; ~20 s in all
    ONBOARDING_DAY_SECONDS=0.3 python examples/onboarding_drip.py
    celery -A onboarding_drip worker              # (from examples/) real days

Two users sign up: ada never upgrades and gets all four emails; bob upgrades on day 3-4
and gets no upgrade offer. The script starts a worker, sends the events, prints what
each run does, and exits 0 when both runs ended as expected.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from _demo import demo_dir, run_demo
from celery import Celery

from celeryflow import Context, Event, Flow, Run, event

if __name__ == "__main__":
    # Run as a script: a store of its own ($CELERYFLOW_EXAMPLE_DIR, else a new temporary
    # directory removed at exit) so examples never share files, the embedded broker
    # beside it, and a "day" of one second. The worker started below inherits all three.
    DEMO_DIR = demo_dir("cf-onboarding-")
    os.environ.setdefault("ONBOARDING_DAY_SECONDS", "1")

DAY = timedelta(seconds=float(os.environ.get("ONBOARDING_DAY_SECONDS", "86400")))

app = Celery("onboarding_drip")  # your existing Celery app; no broker given -> embedded
flow = Flow(app)  # store: $CELERYFLOW_STORE, else sqlite:///celeryflow.db


def send_email(to: str, template: str) -> dict[str, str]:
    # Steps are at-least-once: a real provider call would pass an idempotency key
    # built from ctx.run_id and the step id.
    return {"to": to, "template": template, "status": "sent"}


@flow.function(id="onboarding-drip", trigger=event("user/signed_up"))
def onboarding_drip(ctx: Context) -> dict[str, Any]:
    user_id, email = ctx.event.data["user_id"], ctx.event.data["email"]
    ctx.step.run("send-welcome", send_email, email, "welcome")
    ctx.step.sleep("until-day-3", 3 * DAY)  # the run parks; no worker is held
    ctx.step.run("send-tips", send_email, email, "tips")
    ctx.step.sleep("until-day-7", 4 * DAY)
    ctx.step.run("send-check-in", send_email, email, "check-in")
    upgraded = ctx.step.wait_for_event(
        "upgraded",
        event="user/upgraded",
        match="data.user_id",  # the upgrade's data.user_id == this sign-up's data.user_id
        timeout=7 * DAY,  # until day 14
        lookback=7 * DAY,  # an upgrade since sign-up counts, not only one after day 7
    )
    if upgraded is not None:
        return {"user_id": user_id, "upgraded": True, "plan": upgraded.data.get("plan")}
    ctx.step.run("send-upgrade-offer", send_email, email, "upgrade-offer")
    return {"user_id": user_id, "upgraded": False}


# -- the demo: start a worker, send events, watch the runs ---------------------------------


def days(run: Run, when: datetime | None) -> str:
    """``when`` in days since the welcome email was sent (day 0)."""
    welcome = next((s.ended_at for s in run.steps if s.id == "send-welcome"), None)
    start = welcome or run.started_at or run.created_at
    return f"day {(when - start) / DAY:5.2f}" if when else "day   ?  "


def demo() -> bool:
    users = {"ada": "u-ada", "bob": "u-bob"}
    ids = flow.send(
        [
            Event(name="user/signed_up", data={"user_id": uid, "email": f"{name}@example.com"})
            for name, uid in users.items()
        ]
    )
    print(f"sent user/signed_up for {', '.join(users)}  (1 day = {DAY.total_seconds():g} s)")
    run_ids = {
        name: flow.list_runs(event_id=eid)[0].id for name, eid in zip(users, ids, strict=True)
    }
    printed: dict[str, int] = dict.fromkeys(users, 0)
    status: dict[str, str] = dict.fromkeys(users, "")
    runs: dict[str, Run] = {}
    bob_upgraded = False
    deadline = time.monotonic() + 60 + 16 * DAY.total_seconds()
    while time.monotonic() < deadline:
        for name, run_id in run_ids.items():
            run = runs[name] = flow.get_run(run_id)
            done = [s for s in run.steps if s.status == "completed" and s.kind != "sleep"]
            for step in done[printed[name] :]:
                when = step.ended_at or step.started_at
                what = step.output["template"] if step.kind == "run" else step.output
                if step.kind == "wait":
                    what = "timed out" if what is None else f"{what['name']} {what['data']}"
                print(f"  {name}  {days(run, when)}  {step.id:<18} -> {what}")
            printed[name] = len(done)
            if run.status.value != status[name]:
                status[name] = run.status.value
                until = f" until {days(run, run.wake_at)}" if run.wake_at else ""
                print(f"  {name}  run {run.status.value}{until}")
        if not bob_upgraded and any(s.id == "send-tips" for s in runs["bob"].steps):
            # bob upgrades while his run sleeps towards day 7: lookback catches it
            flow.send(Event(name="user/upgraded", data={"user_id": users["bob"], "plan": "pro"}))
            print(f"sent user/upgraded for bob ({days(runs['bob'], datetime.now(timezone.utc))})")
            bob_upgraded = True
        if all(r.status.value in ("completed", "failed", "cancelled") for r in runs.values()):
            break
        time.sleep(0.05)
    else:
        print("the runs did not finish in time; see the worker log below")
        return False
    for name, run in runs.items():
        error = f", error {run.error.get('type')}: {run.error.get('message')}" if run.error else ""
        print(
            f"{name}: {run.status.value} at {days(run, run.ended_at)}, output {run.output}{error}"
        )
    ada, bob = runs["ada"], runs["bob"]
    ada_ok = ada.output == {"user_id": "u-ada", "upgraded": False} and any(
        s.id == "send-upgrade-offer" for s in ada.steps
    )
    bob_ok = bool(bob.output and bob.output.get("upgraded")) and not any(
        s.id == "send-upgrade-offer" for s in bob.steps
    )
    if not (ada_ok and bob_ok):
        print("unexpected outcome: ada should get the offer, bob (upgraded) should not")
        return False
    print("ada got the upgrade offer; bob, who upgraded, did not")
    return True


if __name__ == "__main__":
    sys.exit(run_demo("onboarding_drip", DEMO_DIR, demo))
