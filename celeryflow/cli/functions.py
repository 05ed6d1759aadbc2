"""Commands on functions: ``functions`` (what the app defines), ``pause``, ``resume``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click

from ..durations import utcnow
from ..events import EventTrigger
from ..functions import FLOW_CONTROL_OPTIONS, FlowFunction
from ..schedule import CronTrigger
from .base import Failure, app_flow, main, open_store, require_flow, store_option
from .table import echo_json, print_table, short_time

__all__ = ["list_functions", "pause", "resume"]

CONTROLS = FLOW_CONTROL_OPTIONS


def _trigger(trigger: EventTrigger | CronTrigger) -> str:
    if isinstance(trigger, CronTrigger):
        return (
            f"cron {trigger.expression!r}"
            + (f" {trigger.tz}" if trigger.tz else "")
            + (f" jitter {_value(trigger.jitter)}" if trigger.jitter else "")
        )
    return trigger.name + (f" if {trigger.if_}" if trigger.if_ else "")


def _value(value: Any) -> str:
    if hasattr(value, "model_dump"):
        fields = value.model_dump(exclude_none=True, exclude_defaults=False)
        return "(" + ", ".join(f"{k}={_value(v)}" for k, v in fields.items()) + ")"
    if isinstance(value, list):
        return ", ".join(_value(v) for v in value)
    if hasattr(value, "total_seconds"):
        return f"{value.total_seconds():g}s"
    return str(value)


def _controls(fn: FlowFunction) -> dict[str, str]:
    config = fn.config
    return {
        name: _value(getattr(config, name))
        for name in CONTROLS
        if getattr(config, name) not in (None, [])
    }


def _next_slots(fn: FlowFunction, now: datetime, count: int) -> list[datetime]:
    slots: list[datetime] = []
    for trigger in fn.crons:
        at = now
        for _ in range(count):
            at = trigger.next_slot(at)
            slots.append(at)
    return sorted(slots)[:count]


@main.command("functions")
@store_option
@click.option("--slots", default=3, show_default=True, help="Next cron slots to show.")
@click.option("--json", "as_json", is_flag=True, help="JSON: each function and its settings.")
@click.pass_context
def list_functions(ctx: click.Context, store_url: str | None, slots: int, as_json: bool) -> None:
    """The app's functions (-A): triggers, flow control, next cron slots, paused."""
    flow = require_flow(ctx, "functions")
    paused = open_store(ctx, store_url).paused_functions()
    now = utcnow()
    listed: list[dict[str, Any]] = []
    for fn in flow.functions.values():
        listed.append(
            {
                "id": fn.id,
                "triggers": [_trigger(t) for t in fn.config.triggers],
                "flow_control": _controls(fn),
                "next_slots": [s.isoformat() for s in _next_slots(fn, now, slots)],
                "paused_at": paused[fn.id].isoformat() if fn.id in paused else None,
            }
        )
    gone = sorted(set(paused) - set(flow.functions))
    if as_json:
        echo_json({"functions": listed, "paused_not_in_app": gone})
        return
    print_table(
        ("FUNCTION", "TRIGGERS", "FLOW CONTROL", "NEXT CRON", "PAUSED"),
        [
            [
                f["id"],
                "; ".join(f["triggers"]) or "-",
                "; ".join(f"{k}{v}" for k, v in f["flow_control"].items()) or "-",
                ", ".join(short_time(datetime.fromisoformat(s)) for s in f["next_slots"]) or "-",
                f"since {short_time(paused[f['id']])}" if f["paused_at"] else "no",
            ]
            for f in listed
        ],
    )
    for function_id in gone:
        click.echo(f"paused, not defined in the app: {function_id}")


def _known(ctx: click.Context, function_id: str) -> None:
    """With -A, the function must be one of the app's (a typo pauses nothing)."""
    flow = app_flow(ctx)
    if flow is not None and function_id not in flow.functions:
        known = ", ".join(sorted(flow.functions)) or "none"
        raise Failure(f"the app has no function {function_id!r} (it has: {known})")


@main.command("pause")
@store_option
@click.argument("function_id")
@click.pass_context
def pause(ctx: click.Context, store_url: str | None, function_id: str) -> None:
    """Pause FUNCTION_ID: events and cron slots start no run of it (the events are
    recorded all the same) until `celeryflow resume`; runs already started go on."""
    _known(ctx, function_id)
    store = open_store(ctx, store_url)
    if store.pause_function(function_id, utcnow()):
        click.echo(f"paused {function_id}: events and cron start no run of it until resumed")
    else:
        since = store.paused_functions().get(function_id)
        click.echo(f"{function_id} was already paused (since {short_time(since)})")


@main.command("resume")
@store_option
@click.argument("function_id")
@click.pass_context
def resume(ctx: click.Context, store_url: str | None, function_id: str) -> None:
    """Resume FUNCTION_ID: events start its runs again (those sent while it was
    paused do not; nor do the cron slots it missed)."""
    store = open_store(ctx, store_url)
    if store.resume_function(function_id):
        click.echo(f"resumed {function_id}")
    else:
        click.echo(f"{function_id} was not paused")
