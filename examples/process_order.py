"""Order processing: payment, inventory and confirmation as durable steps, then up to
7 days waiting for the shipping label, and cancellation by an ``order/cancelled`` event.

It shows ``step.run`` (each step runs once, its result memoized), ``step.wait_for_event``
matched on ``data.order_id`` (one event resumes only its own order's run) with a timeout,
and ``cancel_on=[CancelOn(event="order/cancelled", match="data.order_id")]``.

No service needed (embedded default: a SQLite store and broker in a temporary directory):

    python examples/process_order.py                      # label timeout 5 s; ~15 s in all
    ORDER_LABEL_TIMEOUT=3s python examples/process_order.py
    celery -A process_order worker                        # (from examples/) 7 days

Three orders are placed: o-1 gets its label and completes, o-2 is cancelled while it
waits, o-3 gets no label and alerts the warehouse at the timeout. The script starts a
worker, sends the events, prints what each run does, and exits 0 when all three ended
as expected.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from _demo import demo_dir, run_demo
from celery import Celery

from celeryflow import CancelOn, Context, Event, Flow, Run, event

if __name__ == "__main__":
    # Run as a script: a store of its own ($CELERYFLOW_EXAMPLE_DIR, else a new temporary
    # directory removed at exit) so examples never share files, the embedded broker
    # beside it, and a short label timeout. The worker started below inherits all three.
    DEMO_DIR = demo_dir("cf-order-")
    os.environ.setdefault("ORDER_LABEL_TIMEOUT", "5s")

LABEL_TIMEOUT = os.environ.get("ORDER_LABEL_TIMEOUT", "7 days")

app = Celery("process_order")  # your existing Celery app; no broker given -> embedded
flow = Flow(app)  # store: $CELERYFLOW_STORE, else sqlite:///celeryflow.db


# Stand-ins for the payment provider, the stock service and the mailer. Steps are
# at-least-once (a worker killed mid-step runs it again), so real calls pass an
# idempotency key: here the run id and the step id.
def charge_payment(key: str, order_id: str, total: float) -> dict[str, Any]:
    return {"charge_id": f"ch_{order_id}", "amount": total, "idempotency_key": key}


def reserve_inventory(order_id: str, items: list[str]) -> dict[str, Any]:
    return {"reservation": f"res_{order_id}", "items": len(items)}


def send_confirmation(email: str, order_id: str) -> dict[str, str]:
    return {"to": email, "template": "order-confirmed", "order_id": order_id}


def notify(to: str, template: str, **fields: Any) -> dict[str, Any]:
    return {"to": to, "template": template, **fields}


@flow.function(
    id="process-order",
    trigger=event("order/placed"),
    cancel_on=[CancelOn(event="order/cancelled", match="data.order_id")],
)
def process_order(ctx: Context) -> dict[str, Any]:
    order = ctx.event.data
    order_id = order["order_id"]
    ctx.step.run(
        "charge-payment", charge_payment, f"{ctx.run_id}:charge-payment", order_id, order["total"]
    )
    ctx.step.run("reserve-inventory", reserve_inventory, order_id, order["items"])
    ctx.step.run("send-confirmation", send_confirmation, order["email"], order_id)
    label = ctx.step.wait_for_event(
        "shipping-label",
        event="shipment/label.created",
        match="data.order_id",  # the label's data.order_id == this order's data.order_id
        timeout=LABEL_TIMEOUT,
    )
    if label is None:  # no label in time: tell the warehouse, end the run
        ctx.step.run("alert-warehouse", notify, "warehouse@example.com", "label-overdue")
        return {"order_id": order_id, "status": "label-overdue"}
    tracking = label.data["tracking"]
    ctx.step.run("send-shipped", notify, order["email"], "order-shipped", tracking=tracking)
    return {"order_id": order_id, "status": "shipped", "tracking": tracking}


# -- the demo: start a worker, send events, watch the runs ---------------------------------

ENDED = ("completed", "failed", "cancelled")
SHOWN = ("charge_id", "reservation", "template")  # the field of a step's output to print


def show(name: str, run: Run, printed: dict[str, int], status: dict[str, str]) -> None:
    """Print the steps a run finished since last time, and its state when it changes."""
    done = [s for s in run.steps if s.status == "completed"]
    for step in done[printed.get(name, 0) :]:
        output = step.output or {}
        what = next((output[f] for f in SHOWN if f in output), output)
        if step.kind == "wait":  # the event that resumed the run, or None at the timeout
            what = "timed out" if step.output is None else f"{output['name']} {output['data']}"
        print(f"  {name}  {step.id:<18} -> {what}")
    printed[name] = len(done)
    if run.status.value != status.get(name):
        status[name] = run.status.value
        print(f"  {name}  run {run.status.value}")


def demo() -> bool:
    orders = ["o-1", "o-2", "o-3"]
    ids = flow.send(
        [
            Event(
                name="order/placed",
                data={"order_id": o, "email": f"{o}@example.com", "items": ["mug"], "total": 12.5},
            )
            for o in orders
        ]
    )
    print(f"sent order/placed for {', '.join(orders)}  (label timeout {LABEL_TIMEOUT})")
    run_ids = {o: flow.list_runs(event_id=e)[0].id for o, e in zip(orders, ids, strict=True)}
    printed: dict[str, int] = {}
    status: dict[str, str] = {}
    runs: dict[str, Run] = {}
    sent_follow_ups = False
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        for o, run_id in run_ids.items():
            runs[o] = flow.get_run(run_id)
            show(o, runs[o], printed, status)
        if not sent_follow_ups and all(runs[o].status.value == "waiting" for o in ("o-1", "o-2")):
            flow.send(
                [
                    Event(
                        name="shipment/label.created", data={"order_id": "o-1", "tracking": "Z1"}
                    ),
                    Event(name="order/cancelled", data={"order_id": "o-2", "reason": "customer"}),
                ]
            )
            print("sent shipment/label.created for o-1 and order/cancelled for o-2")
            sent_follow_ups = True
        if all(run.status.value in ENDED for run in runs.values()):
            break
        time.sleep(0.05)
    else:
        print("the runs did not finish in 90 s; see the worker log below")
        return False
    for o, run in runs.items():
        error = f", error {run.error.get('type')}: {run.error.get('message')}" if run.error else ""
        print(f"{o}: {run.status.value}, output {run.output}{error}")
    expected = {
        "o-1": ("completed", {"order_id": "o-1", "status": "shipped", "tracking": "Z1"}),
        "o-2": ("cancelled", None),
        "o-3": ("completed", {"order_id": "o-3", "status": "label-overdue"}),
    }
    if any((runs[o].status.value, runs[o].output) != want for o, want in expected.items()):
        print(f"unexpected outcome; expected {expected}")
        return False
    print("o-1 shipped, o-2 cancelled while waiting, o-3 alerted the warehouse at the timeout")
    return True


if __name__ == "__main__":
    sys.exit(run_demo("process_order", DEMO_DIR, demo))
