"""Inngest-SDK-style functions for tests/test_compat_inngest.py.

Written as the Inngest Python SDK (0.5) docs write them; only the import differs
(``from celeryflow.compat import inngest`` for ``import inngest``). The test serves
them on its own Celery app (``inngest_celery.serve(app, client, FUNCTIONS)``), as an
application would call ``inngest.flask.serve`` at import time.
"""

from __future__ import annotations

import datetime
import functools
import time
from collections import defaultdict
from typing import Any

from celeryflow.compat import inngest

client = inngest.Inngest(app_id="compat-test")
seen: dict[str, list[Any]] = defaultdict(list)  # what step code observed, per test key


# -- steps, sleeps, parallel ------------------------------------------------------------


def fetch_user(key: str, user_id: int) -> dict[str, Any]:
    seen[key].append("fetch")
    return {"id": user_id, "name": "Ada"}


def double(n: int) -> int:
    return n * 2


@client.create_function(fn_id="onboarding", trigger=inngest.TriggerEvent(event="app/user.created"))
def onboarding(ctx: inngest.ContextSync) -> dict[str, Any]:
    key = ctx.event.data["key"]
    user = ctx.step.run("fetch-user", fetch_user, key, ctx.event.data["user_id"])
    ctx.step.sleep("short-nap", datetime.timedelta(milliseconds=200))
    ctx.step.sleep("nap-ms", 500)  # an int is milliseconds, as in the SDK
    pair = ctx.group.parallel(
        (
            lambda: ctx.step.run("double-a", double, 2),
            lambda: ctx.step.run("double-b", double, 5),
        )
    )
    greeting = ctx.step.run("greet", lambda: f"hello {user['name']}")
    return {"user": user, "pair": list(pair), "greeting": greeting, "run_id": ctx.run_id}


# -- wait_for_event --------------------------------------------------------------------


@client.create_function(
    fn_id="await-approval", trigger=inngest.TriggerEvent(event="app/order.created")
)
def await_approval(ctx: inngest.ContextSync) -> dict[str, Any] | None:
    approval = ctx.step.wait_for_event(
        "wait-for-approval",
        event="app/order.approved",
        if_exp="event.data.order_id == async.data.order_id",
        timeout=ctx.event.data["timeout_ms"],
    )
    if approval is None:
        return None
    return {"by": approval.data["by"], "name": approval.name}


# -- invoke and send_event -------------------------------------------------------------


@client.create_function(fn_id="compute-total", trigger=inngest.TriggerEvent(event="app/total"))
def compute_total(ctx: inngest.ContextSync) -> dict[str, Any]:
    return {"total": sum(ctx.event.data["items"]), "event": ctx.event.name}


@client.create_function(fn_id="checkout", trigger=inngest.TriggerEvent(event="app/checkout"))
def checkout(ctx: inngest.ContextSync) -> dict[str, Any]:
    total = ctx.step.invoke("compute", function=compute_total, data={"items": [1, 2, 3]})
    again = ctx.step.invoke_by_id("compute-again", function_id="compute-total", data={"items": [9]})
    assert again["total"] == 9
    ids = ctx.step.send_event(
        "send-receipt",
        [inngest.Event(name="app/receipt.sent", data={"total": total["total"]})],
    )
    return {"total": total, "ids": ids}


@client.create_function(fn_id="receipt", trigger=inngest.TriggerEvent(event="app/receipt.sent"))
def receipt(ctx: inngest.ContextSync) -> dict[str, Any]:
    return dict(ctx.event.data)


# -- errors and retries ----------------------------------------------------------------


def record_failure(ctx: inngest.ContextSync) -> dict[str, Any]:
    error = ctx.event.data["error"]
    return {"event": ctx.event.name, "name": error["name"], "message": error["message"]}


@client.create_function(
    fn_id="charge",
    trigger=inngest.TriggerEvent(event="app/charge"),
    retries=3,
    on_failure=record_failure,
)
def charge(ctx: inngest.ContextSync) -> None:
    key = ctx.event.data["key"]

    def charge_card() -> None:
        seen[key].append(ctx.attempt)
        raise inngest.NonRetriableError("card declined")

    ctx.step.run("charge-card", charge_card)


@client.create_function(
    fn_id="audit-failures", trigger=inngest.TriggerEvent(event="inngest/function.failed")
)
def audit_failures(ctx: inngest.ContextSync) -> str:
    return str(ctx.event.data["function_id"])


@client.create_function(fn_id="flaky", trigger=inngest.TriggerEvent(event="app/flaky"), retries=2)
def flaky(ctx: inngest.ContextSync) -> dict[str, Any]:
    key = ctx.event.data["key"]

    def call_api() -> str:
        seen[key].append((ctx.attempt, time.monotonic()))
        if ctx.attempt == 0:
            raise inngest.RetryAfterError("rate limited", 300)  # milliseconds
        if ctx.attempt == 1:
            raise RuntimeError("flaky")
        return "ok"

    def always_fails() -> None:
        raise ValueError("nope")

    result = ctx.step.run("call-api", call_api)
    try:
        ctx.step.run("always-fails", always_fails)
        failure = None
    except inngest.StepError as err:
        failure = {"name": err.name, "message": err.message}
    return {"result": result, "failure": failure}


@client.create_function(
    fn_id="fan-out", trigger=inngest.TriggerEvent(event="app/fan-out"), retries=0
)
def fan_out(ctx: inngest.ContextSync) -> dict[str, Any]:
    try:
        ctx.group.parallel(
            (
                lambda: ctx.step.run("fine", lambda: 1),
                lambda: ctx.step.run("broken", lambda: 1 / 0),
            )
        )
    except inngest.StepError as err:
        return {"name": err.name, "message": err.message, "branch": err.error["branch"]}
    return {}


# -- cancel ----------------------------------------------------------------------------


@client.create_function(
    fn_id="reminder",
    trigger=inngest.TriggerEvent(event="app/reminder.set"),
    cancel=[
        inngest.Cancel(
            event="app/reminder.deleted",
            if_exp="event.data.reminder_id == async.data.reminder_id",
            timeout=datetime.timedelta(minutes=5),
        )
    ],
)
def reminder(ctx: inngest.ContextSync) -> None:
    ctx.step.sleep("until-due", datetime.timedelta(minutes=10))


# -- flow control and cron (registration) -------------------------------------------


@client.create_function(
    fn_id="throttled",
    trigger=inngest.TriggerEvent(event="app/throttled"),
    throttle=inngest.Throttle(limit=1, period=500, burst=1),  # 500 ms
    concurrency=[inngest.Concurrency(limit=2, key="event.data.customer")],
)
def throttled(ctx: inngest.ContextSync) -> int:
    return int(ctx.event.data["n"])


@client.create_function(
    fn_id="controlled",
    trigger=inngest.TriggerEvent(event="app/controlled", expression="event.data.ok == true"),
    rate_limit=inngest.RateLimit(limit=10, period=datetime.timedelta(hours=1), key="event.data.u"),
    debounce=inngest.Debounce(period=2000, timeout=60_000),
    priority=inngest.Priority(run="event.data.vip ? 120 : 0"),
    idempotency="event.data.order_id",
    singleton=inngest.Singleton(key="event.data.u", mode="cancel"),
    timeouts=inngest.Timeouts(start=1500, finish=datetime.timedelta(minutes=2)),
    cancel=[inngest.Cancel(event="app/stop", if_exp="async.data.level > event.data.level")],
)
def controlled(ctx: inngest.ContextSync) -> None:
    pass


@client.create_function(
    fn_id="batched",
    trigger=inngest.TriggerEvent(event="app/batched"),
    batch_events=inngest.Batch(max_size=50, timeout=5000, key="event.data.u"),
)
def batched(ctx: inngest.ContextSync) -> int:
    return len(ctx.events)


@client.create_function(
    fn_id="weekly-digest", trigger=inngest.TriggerCron(cron="TZ=Europe/Paris 0 12 * * 5")
)
def weekly_digest(ctx: inngest.ContextSync) -> None:
    pass


@client.create_function(fn_id="uses-ai", trigger=inngest.TriggerEvent(event="app/ai"))
def uses_ai(ctx: inngest.ContextSync) -> None:
    ctx.step.ai.infer("ask", adapter=None, body={})


# -- async -----------------------------------------------------------------------------


async def load_user(user_id: int) -> dict[str, Any]:
    return {"id": user_id, "plan": "pro"}


@client.create_function(fn_id="async-flow", trigger=inngest.TriggerEvent(event="app/async"))
async def async_flow(ctx: inngest.Context) -> dict[str, Any]:
    user = await ctx.step.run("load-user", load_user, ctx.event.data["user_id"])
    await ctx.step.sleep("pause", 300)
    updated, sent = await ctx.group.parallel(
        (
            functools.partial(ctx.step.run, "update-user", double, 21),
            functools.partial(ctx.step.run, "send-email", lambda: "sent"),
        )
    )
    total = await ctx.step.invoke("total", function=compute_total, data={"items": [4, 5]})
    return {"user": user, "updated": updated, "sent": sent, "total": total["total"]}


FUNCTIONS = [
    onboarding,
    await_approval,
    compute_total,
    checkout,
    receipt,
    charge,
    audit_failures,
    flaky,
    fan_out,
    reminder,
    throttled,
    controlled,
    batched,
    weekly_digest,
    uses_ai,
    async_flow,
]
