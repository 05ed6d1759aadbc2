"""A daily metrics report on weekdays at 09:00 Berlin time, fired by a plain ``worker``.

It shows a cron trigger in a time zone (``cron("0 9 * * 1-5", tz="Europe/Berlin")``,
DST-correct, slots stored in UTC) replacing a beat entry: the run's event is
``celeryflow/scheduled.timer`` with the slot in ``data.scheduled_at``, and each slot
fires once however many workers (and beats, if you run one) look at it. No beat needed.

No service needed (embedded default: a SQLite store and broker in a temporary directory):

    python examples/daily_report.py                       # a report every 2 s, 3 of them
    DAILY_REPORT_CRON="* * * * * */3" DAILY_REPORT_RUNS=2 python examples/daily_report.py
    celery -A daily_report worker                         # (from examples/) weekdays 09:00

Run as a script, the schedule is ``$DAILY_REPORT_CRON`` (default ``"* * * * * */2"``: a
sixth field is seconds) so there is something to see; imported by a worker, it is the
real one unless ``DAILY_REPORT_CRON`` is set. The script starts ``worker`` (no ``-B``), watches
``DAILY_REPORT_RUNS`` reports come in, and exits 0.
"""

from __future__ import annotations

import os
import sys
import time
import zlib
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

from _demo import demo_dir, run_demo
from celery import Celery

from celeryflow import Context, Flow, Run, cron

if __name__ == "__main__":
    # Run as a script: a store of its own ($CELERYFLOW_EXAMPLE_DIR, else a new temporary
    # directory removed at exit) so examples never share files, the embedded broker
    # beside it, and a schedule in seconds. The worker started below inherits all three.
    DEMO_DIR = demo_dir("cf-report-")
    os.environ.setdefault("DAILY_REPORT_CRON", "* * * * * */2")

SCHEDULE = os.environ.get("DAILY_REPORT_CRON", "0 9 * * 1-5")  # weekdays, 09:00
TIME_ZONE = "Europe/Berlin"

app = Celery("daily_report")  # your existing Celery app; no broker given -> embedded
flow = Flow(app)  # store: $CELERYFLOW_STORE, else sqlite:///celeryflow.db


def collect_metrics(day: str) -> dict[str, Any]:
    # stand-in for the queries of a real report: numbers derived from the slot
    seed = zlib.crc32(day.encode())
    return {"day": day, "signups": 40 + seed % 60, "orders": 100 + seed % 250}


def send_report(to: str, metrics: dict[str, Any]) -> dict[str, str]:
    text = f"{metrics['day']}: {metrics['signups']} sign-ups, {metrics['orders']} orders"
    return {"to": to, "text": text}


@flow.function(id="daily-report", trigger=cron(SCHEDULE, tz=TIME_ZONE), retries=3)
def daily_report(ctx: Context) -> dict[str, str]:
    slot = datetime.fromisoformat(ctx.event.data["scheduled_at"])  # the slot, in UTC
    local = slot.astimezone(ZoneInfo(TIME_ZONE))
    metrics = ctx.step.run("collect-metrics", collect_metrics, local.isoformat(timespec="seconds"))
    sent = ctx.step.run("send-report", send_report, "team@example.com", metrics)
    return {"slot_utc": slot.isoformat(), "report": sent["text"]}


# -- the demo: start a worker (no beat), watch the scheduled runs come in -----------------


def demo() -> bool:
    wanted = int(os.environ.get("DAILY_REPORT_RUNS", "3"))
    real = cron("0 9 * * 1-5", tz=TIME_ZONE)
    now = datetime.now(timezone.utc)
    upcoming = real.next_slot(now)
    print(
        f"in production the next slot of {real.expression!r} ({TIME_ZONE}) is "
        f"{upcoming.astimezone(real.zone()):%a %Y-%m-%d %H:%M %Z} = {upcoming:%H:%M} UTC"
    )
    print(f"demo schedule {SCHEDULE!r}: waiting for {wanted} reports from the worker")
    shown: set[str] = set()
    deadline = time.monotonic() + 90
    done: list[Run] = []
    while time.monotonic() < deadline:
        runs = flow.list_runs(function_id="daily-report")
        for run in sorted(runs, key=lambda r: r.created_at):
            if run.id in shown or run.status.value not in ("completed", "failed", "cancelled"):
                continue
            shown.add(run.id)
            slot = run.events[0].data["scheduled_at"]
            output = run.output or {}
            print(f"  slot {slot}  run {run.status.value}: {output.get('report', run.error)}")
            if run.status.value == "completed":
                done.append(run)
        if len(done) >= wanted:
            break
        time.sleep(0.1)
    else:
        print(f"only {len(done)} of {wanted} reports in 90 s; see the worker log below")
        return False
    slots = [r.events[0].data["scheduled_at"] for r in flow.list_runs(function_id="daily-report")]
    if len(slots) != len(set(slots)):
        print(f"a slot fired twice: {sorted(slots)}")
        return False
    print(f"{len(done)} reports sent, each slot fired once ({len(slots)} runs so far)")
    return True


if __name__ == "__main__":
    sys.exit(run_demo("daily_report", DEMO_DIR, demo))
