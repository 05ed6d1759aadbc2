"""Fan-out: one batch event becomes one run per item, spread over the workers.

``import-batch`` loads the rows of an uploaded file and sends one ``import/row`` event per
row with ``ctx.step.send_event`` (recorded with its step in one transaction, with ids
derived from the run and step, so a retry or replay of the batch run never sends them
twice). Each event starts an ``import-row`` run doing its own durable step, with its own
retries; ``Concurrency(limit=3, key="event.data.batch_id")`` lets at most three rows of a
batch import at once. The batch run does not wait for its items: to collect their
results instead, call ``ctx.step.invoke("row-1", function=import_row, data={...})`` per
item, or wrap those calls in ``ctx.step.parallel``.

No service needed (embedded default: a SQLite store and broker in a temporary directory):

    python examples/fan_out.py                            # 8 rows, 0.5 s of work each
    FAN_OUT_ROWS=6 FAN_OUT_WORK_SECONDS=0.2 python examples/fan_out.py
    celery -A fan_out worker                              # (from examples/) what you'd run

The script starts a worker with four processes, sends one batch event, prints the batch
run and every row run, and exits 0 when all rows were imported within the limit.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import datetime
from typing import Any

from _demo import demo_dir, run_demo
from celery import Celery

from celeryflow import Concurrency, Context, Event, Flow, Run, event

if __name__ == "__main__":
    # Run as a script: a store of its own ($CELERYFLOW_EXAMPLE_DIR, else a new temporary
    # directory removed at exit) so examples never share files, and the embedded broker
    # beside it. The worker started below inherits both.
    DEMO_DIR = demo_dir("cf-fan-out-")

WORK_SECONDS = float(os.environ.get("FAN_OUT_WORK_SECONDS", "0.5"))
ROW_LIMIT = 3  # rows of one batch importing at once, across all workers

app = Celery("fan_out")  # your existing Celery app; no broker given -> embedded
flow = Flow(app)  # store: $CELERYFLOW_STORE, else sqlite:///celeryflow.db


def load_rows(batch_id: str, count: int) -> list[dict[str, Any]]:
    # stand-in for reading the uploaded file
    return [{"sku": f"{batch_id}-sku-{i}", "qty": i + 1} for i in range(count)]


def upsert_row(row: dict[str, Any]) -> dict[str, Any]:
    time.sleep(WORK_SECONDS)  # stand-in for the real work
    return {"sku": row["sku"], "stored": True, "worker_pid": os.getpid()}


@flow.function(id="import-batch", trigger=event("import/batch.received"))
def import_batch(ctx: Context) -> dict[str, Any]:
    batch_id = ctx.event.data["batch_id"]
    rows = ctx.step.run("load-rows", load_rows, batch_id, ctx.event.data["rows"])
    event_ids = ctx.step.send_event(
        "fan-out",  # one event per row, sent once
        [Event(name="import/row", data={"batch_id": batch_id, "row": row}) for row in rows],
    )
    return {"batch_id": batch_id, "rows": len(rows), "event_ids": event_ids}


@flow.function(
    id="import-row",
    trigger=event("import/row"),
    concurrency=Concurrency(limit=ROW_LIMIT, key="event.data.batch_id"),
)
def import_row(ctx: Context) -> dict[str, Any]:
    stored = ctx.step.run("upsert", upsert_row, ctx.event.data["row"])
    return {"batch_id": ctx.event.data["batch_id"], **stored}


# -- the demo: start a worker, send one batch event, watch the fan-out ---------------------

ENDED = ("completed", "failed", "cancelled")


def wait_until_ended(run_ids: list[str], seconds: float, label: str) -> list[Run] | None:
    """Poll the runs until all ended, printing how many are in each state as it changes."""
    deadline = time.monotonic() + seconds
    last = ""
    while time.monotonic() < deadline:
        runs = [flow.get_run(run_id) for run_id in run_ids]
        states = [run.status.value for run in runs]
        counts = ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states)))
        if counts != last:
            print(f"  {label}: {counts}")
            last = counts
        if all(state in ENDED for state in states):
            return runs
        time.sleep(0.05)
    return None


def most_at_once(spans: list[tuple[datetime, datetime]]) -> int:
    """The largest number of spans that overlap at one moment."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    peak = current = 0
    for _, change in edges:
        current += change
        peak = max(peak, current)
    return peak


def demo() -> bool:
    rows = int(os.environ.get("FAN_OUT_ROWS", "8"))
    [batch_event] = flow.send(
        Event(name="import/batch.received", data={"batch_id": "b-7", "rows": rows})
    )
    print(f"sent import/batch.received (b-7, {rows} rows, {WORK_SECONDS:g} s of work each)")
    [batch] = flow.list_runs(event_id=batch_event)
    ended = wait_until_ended([batch.id], 60, "batch run")
    if ended is None or ended[0].status.value != "completed":
        print(f"the batch run did not complete: {ended}")
        return False
    batch = ended[0]
    for step in batch.steps:
        shown = len(step.output) if isinstance(step.output, list) else step.output
        print(f"  batch  step {step.id:<10} {step.kind:<5} -> {shown}")
    print(f"batch run {batch.status.value}: sent {batch.output['rows']} import/row events")

    row_runs = [flow.list_runs(event_id=eid)[0].id for eid in batch.output["event_ids"]]
    runs = wait_until_ended(row_runs, 60 + rows * WORK_SECONDS, "row runs")
    if runs is None:
        print("the row runs did not finish in time; see the worker log below")
        return False
    spans = []  # when each row's upsert step ran
    for run in runs:
        for upsert in run.steps:
            if upsert.started_at and upsert.ended_at:
                spans.append((upsert.started_at, upsert.ended_at))
        print(f"  row run {run.id[-8:]}  {run.status.value:<9} -> {run.output}")
    pids = {run.output["worker_pid"] for run in runs if run.output}
    completed = sum(run.status.value == "completed" for run in runs)
    peak = most_at_once(spans)
    print(
        f"{completed} of {rows} row runs completed on {len(pids)} worker process(es), "
        f"at most {peak} at once (limit {ROW_LIMIT})"
    )
    return completed == rows and peak <= ROW_LIMIT


if __name__ == "__main__":
    sys.exit(run_demo("fan_out", DEMO_DIR, demo, concurrency=4))
