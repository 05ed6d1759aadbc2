"""A legacy Celery app migrated halfway: legacy tasks and flow functions side by side
on one worker, on the embedded default (no service needed).

* ``send_receipt`` and ``update_crm`` are untouched legacy ``@app.task``s;
* ``charge`` was a legacy task and is now a flow function (``params=`` keeps its old
  call site ``charge.delay(order_id, amount)`` working);
* ``fulfil`` is new: a durable function that calls the legacy ``send_receipt`` as a
  step (the run parks while the task runs on its usual queue);
* ``update_crm`` is triggered by the ``order/fulfilled`` event through
  ``flow.subscribe``, without a change to the task;
* a legacy ``chain`` still runs as before.

    python examples/legacy_halfway.py     # starts a worker, drives it all, prints it
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from celery import Celery, chain

from celeryflow import Context, Event, Flow, Run, event

STORE_DIR = Path(os.environ.get("LEGACY_EXAMPLE_DIR") or tempfile.gettempdir())
app = Celery("legacy_halfway")  # the existing app; no broker given -> embedded
flow = Flow(app, store=f"sqlite:///{STORE_DIR / 'legacy-halfway.db'}")


# -- legacy tasks, unchanged --------------------------------------------------------


@app.task(name="shop.send_receipt")
def send_receipt(order_id: str, amount: float) -> str:
    print(f"    (worker) receipt for {order_id}: {amount:.2f}", flush=True)
    return f"receipt-{order_id}"


@app.task(name="shop.update_crm")
def update_crm(order_id: str, receipt: str) -> str:
    print(f"    (worker) CRM updated for {order_id} ({receipt})", flush=True)
    return "crm-ok"


@app.task(name="shop.add")
def add(x: int, y: int) -> int:
    return x + y


# -- migrated and new ---------------------------------------------------------------


@flow.function(id="charge", params=["order_id", "amount"])
def charge(ctx: Context) -> dict[str, object]:
    """Was ``@app.task def charge(order_id, amount)``; ``charge.delay(...)`` still works."""
    data = ctx.event.data
    payment = ctx.step.run("capture", lambda: {"captured": data["amount"]})
    ctx.step.send_event(
        "charged", Event(name="order/charged", data={"order_id": data["order_id"], **data})
    )
    return {"order_id": data["order_id"], **payment}


@flow.function(id="fulfil", trigger=event("order/charged"))
def fulfil(ctx: Context) -> dict[str, str]:
    order_id = ctx.event.data["order_id"]
    receipt = ctx.step.invoke(
        "receipt", task=send_receipt, args=(order_id, ctx.event.data["amount"])
    )
    ctx.step.send_event(
        "fulfilled", Event(name="order/fulfilled", data={"order_id": order_id, "receipt": receipt})
    )
    return {"order_id": order_id, "receipt": str(receipt)}


flow.subscribe(update_crm, trigger=event("order/fulfilled"))


def main() -> int:
    here = Path(__file__).resolve().parent
    for stale in STORE_DIR.glob("legacy-halfway*.db*"):
        stale.unlink()
    log = STORE_DIR / "legacy-halfway-worker.log"
    command = [sys.executable, "-m", "celery", "-A", "legacy_halfway", "worker", "-c", "2"]
    print(f"$ {' '.join(command[2:])}   (log: {log})")
    env = {**os.environ, "LEGACY_EXAMPLE_DIR": str(STORE_DIR)}
    with open(log, "wb") as out:
        worker = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=here, env=env)
    try:
        handle = charge.delay("o-42", 19.5)  # the old call site, unchanged
        print(f"charge.delay('o-42', 19.5) -> run {handle.id}")
        print(f"charge output: {handle.get(timeout=60)}")
        deadline = time.monotonic() + 60
        crm: list[Run] = []
        while time.monotonic() < deadline and not crm:
            crm = flow.list_runs(function_id="task:shop.update_crm", status="completed")
            time.sleep(0.1)
        if not crm:
            print("update_crm did not run in 60 s; see the worker log")
            return 1
        [fulfilled] = flow.list_runs(function_id="fulfil")
        print(f"fulfil output: {flow.get_run(fulfilled.id).output}")
        print(f"update_crm (subscribed legacy task) output: {crm[0].output}")
        chain(add.s(1, 2), add.s(3)).apply_async()  # legacy canvas, as before
        print("legacy chain sent beside the flow functions")
        return 0
    finally:
        worker.terminate()
        worker.wait(30)


if __name__ == "__main__":
    sys.exit(main())
