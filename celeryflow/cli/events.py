"""Commands on events: ``send`` one, list the recent ones (``events``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from ..store import views as v
from .base import UsageFailure, main, open_store, parse_when, require_flow, store_option
from .table import echo_json, print_table, short_time

__all__ = ["list_events", "send"]


def _data(text: str) -> dict[str, Any]:
    """``--data`` as JSON text, or ``@path`` to a JSON file (``@-``: stdin)."""
    where = "--data"
    if text.startswith("@"):
        name = text[1:]
        where = f"--data @{name}"
        try:
            text = sys.stdin.read() if name == "-" else Path(name).read_text()
        except OSError as exc:
            raise UsageFailure(f"{where}: cannot read it ({exc.strerror})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageFailure(f"{where}: not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise UsageFailure(f"{where}: an event's data is a JSON object, not {type(data).__name__}")
    return data


@main.command("send")
@click.argument("name")
@click.option("--data", default="{}", metavar="JSON|@FILE", help="The event's data (an object).")
@click.option("--id", "event_id", default=None, help="The event id (deduplicates sends).")
@click.option("--json", "as_json", is_flag=True, help="JSON: the event id and the runs.")
@click.pass_context
def send(ctx: click.Context, name: str, data: str, event_id: str | None, as_json: bool) -> None:
    """Send the event NAME, as flow.send would from the app (-A): prints the event id
    and the runs it started."""
    payload = _data(data)
    flow = require_flow(ctx, "send")
    # a dict, so a bad name or id gets the same one-line error as flow.send gives
    event: dict[str, Any] = {"name": name, "data": payload}
    if event_id is not None:
        event["id"] = event_id
    [sent] = flow.send(event)
    started = flow.list_runs(event_id=sent, limit=1000)
    if as_json:
        echo_json(
            {
                "event_id": sent,
                "runs": [{"id": r.id, "function_id": r.function_id} for r in started],
            }
        )
        return
    click.echo(f"event {sent}")
    for run in started:
        click.echo(f"run {run.id} {run.function_id}")
    if not started:
        click.echo("started no run (no function of the app is triggered by it, or it was paused)")


@main.command("events")
@store_option
@click.option("--name", default=None, help="Only events of this name.")
@click.option("--before", default=None, metavar="WHEN", help="Received before: 1h, or ISO time.")
@click.option("--limit", default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON: the events and their runs.")
@click.pass_context
def list_events(
    ctx: click.Context,
    store_url: str | None,
    name: str | None,
    before: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Recent events, newest first, with the runs each started."""
    store = open_store(ctx, store_url)
    found = v.recent_events(store, name=name, limit=limit, before=parse_when(before, "--before"))
    if as_json:
        echo_json([e.as_json() for e in found])
        return
    print_table(
        ("EVENT", "NAME", "RECEIVED", "RUNS"),
        [
            [
                e.id,
                e.name,
                short_time(e.received_at),
                ", ".join(f"{r.id} {r.function_id} {r.status.value}" for r in e.runs) or "-",
            ]
            for e in found
        ],
    )
