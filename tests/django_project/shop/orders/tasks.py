"""Found by app.autodiscover_tasks(), as a Django project's tasks.py is."""

from typing import Any

from celeryflow import event
from shop.celery import flow

attempts: dict[str, int] = {}


def charge(order_id: int) -> str:
    """Fails on its first attempt per order: the step retries after a back-off."""
    attempts[str(order_id)] = attempts.get(str(order_id), 0) + 1
    if attempts[str(order_id)] == 1:
        raise ConnectionError("payment provider timed out")
    return f"charged {order_id}"


@flow.function(id="order-followup", trigger=event("order/placed"))
def order_followup(ctx: Any) -> dict[str, Any]:
    charged = ctx.step.run("charge", charge, ctx.event.data["order_id"])
    ctx.step.sleep("cool-off", "1s")
    note = ctx.step.run("thank", lambda: f"thanks, {ctx.event.data['customer']}")
    return {"charged": charged, "note": note}
