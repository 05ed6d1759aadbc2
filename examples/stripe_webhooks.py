"""Idempotent Stripe-style webhooks on the embedded default (no service needed).

* the webhook endpoint (Flask) verifies the provider's signature
  (``Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "{t}." + body>``);
* the provider's event id becomes the celeryflow event id, so a provider retry of
  the same delivery starts nothing twice;
* one function per webhook type (``stripe/checkout.session.completed``,
  ``stripe/invoice.payment_failed``);
* each piece of work is a step, so when one fails and is retried, the steps before
  it are not done again (the demo's e-mail provider fails once).

    pip install 'celeryflow-engine[flask]'
    python examples/stripe_webhooks.py   # starts a worker and the endpoint, plays deliveries
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from celery import Celery
from flask import Flask, Response, request

from celeryflow import Context, Event, Flow, event

SECRET = os.environ.get("STRIPE_WEBHOOK_SECRET", "whsec_demo").encode()
STORE_DIR = Path(os.environ.get("STRIPE_EXAMPLE_DIR") or tempfile.gettempdir())
app = Celery("stripe_webhooks")  # no broker given -> embedded
flow = Flow(app, store=f"sqlite:///{STORE_DIR / 'stripe-webhooks.db'}", retry_base="200ms")
MARKS = STORE_DIR / "stripe-webhooks-marks.txt"  # the demo's side effects, one per line


def side_effect(what: str) -> str:
    with open(MARKS, "a") as handle:
        handle.write(what + "\n")
    return what


def send_email(to: str, template: str) -> str:
    # the demo's e-mail provider is down on the first try of each template
    if f"email-down {template}" not in MARKS.read_text().splitlines():
        side_effect(f"email-down {template}")
        raise ConnectionError("SMTP provider unavailable")
    return side_effect(f"email {template} {to}")


@flow.function(id="checkout-completed", trigger=event("stripe/checkout.session.completed"))
def checkout_completed(ctx: Context) -> dict[str, Any]:
    session = ctx.event.data
    ctx.step.run("record-payment", side_effect, f"paid {session['id']} {session['amount_total']}")
    ctx.step.run("provision", side_effect, f"provision {session['customer']}")
    ctx.step.run("receipt", send_email, session["customer_email"], "receipt")
    return {"session": session["id"], "provisioned": session["customer"]}


@flow.function(id="payment-failed", trigger=event("stripe/invoice.payment_failed"))
def payment_failed(ctx: Context) -> dict[str, Any]:
    invoice = ctx.event.data
    ctx.step.run("flag-account", side_effect, f"dunning {invoice['customer']}")
    ctx.step.run("notify", send_email, invoice["customer_email"], "payment-failed")
    return {"invoice": invoice["id"]}


# -- the webhook endpoint --------------------------------------------------------------

web = Flask(__name__)


def verified(body: bytes, header: str, tolerance: float = 300) -> bool:
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        stamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    expected = hmac.new(SECRET, f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    fresh = abs(time.time() - stamp) <= tolerance
    return fresh and hmac.compare_digest(expected, parts.get("v1", ""))


@web.post("/webhooks/stripe")
def stripe_webhook() -> Response:
    body = request.get_data()
    if not verified(body, request.headers.get("Stripe-Signature", "")):
        return Response("bad signature", status=400)
    payload = json.loads(body)
    # the provider's event id is ours: a retried delivery is recognised and ignored
    flow.send(
        Event(id=payload["id"], name=f"stripe/{payload['type']}", data=payload["data"]["object"])
    )
    return Response(status=200)


def deliver(url: str, payload: dict[str, Any], secret: bytes = SECRET) -> int:
    """What the provider does: sign the exact body and POST it."""
    body = json.dumps(payload).encode()
    stamp = int(time.time())
    signature = hmac.new(secret, f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    headers = {"Content-Type": "application/json", "Stripe-Signature": f"t={stamp},v1={signature}"}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, body, headers)) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def main() -> int:
    from werkzeug.serving import make_server

    here = Path(__file__).resolve().parent
    for stale in STORE_DIR.glob("stripe-webhooks*"):
        stale.unlink()
    MARKS.touch()
    log = STORE_DIR / "stripe-webhooks-worker.log"
    env = {**os.environ, "STRIPE_EXAMPLE_DIR": str(STORE_DIR)}
    command = [sys.executable, "-m", "celery", "-A", "stripe_webhooks", "worker", "-c", "2"]
    with open(log, "wb") as out:
        worker = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=here, env=env)
    server = make_server("127.0.0.1", 0, web)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/webhooks/stripe"
    try:
        checkout = {
            "id": "evt_1Checkout",
            "type": "checkout.session.completed",
            "data": {
                "object": {
                    "id": "cs_42",
                    "amount_total": 1900,
                    "customer": "cus_7",
                    "customer_email": "ada@example.com",
                }
            },
        }
        failed = {
            "id": "evt_2Failed",
            "type": "invoice.payment_failed",
            "data": {"object": {"id": "in_9", "customer": "cus_8", "customer_email": "bo@x.io"}},
        }
        print(f"delivery evt_1Checkout: {deliver(url, checkout)}")
        print(f"provider retries evt_1Checkout: {deliver(url, checkout)}")
        print(f"delivery evt_2Failed: {deliver(url, failed)}")
        print(f"forged delivery: {deliver(url, failed, secret=b'wrong')}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            runs = flow.list_runs()
            if len(runs) == 2 and all(r.status.value == "completed" for r in runs):
                break
            time.sleep(0.1)
        else:
            print("the runs did not complete in 60 s; see the worker log")
            return 1
        for run in sorted(flow.list_runs(), key=lambda r: r.function_id):
            print(f"run {run.function_id}: {run.status.value} {run.output}")
        print("side effects (each once, though e-mail failed once and was retried):")
        for line in MARKS.read_text().splitlines():
            print(f"  {line}")
        return 0
    finally:
        server.shutdown()
        worker.terminate()
        worker.wait(30)


if __name__ == "__main__":
    sys.exit(main())
