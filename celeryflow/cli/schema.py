"""Commands on the store itself: ``migrate`` and ``prune``."""

from __future__ import annotations

from typing import Any

import click

from ..durations import parse_duration, utcnow
from ..errors import ConfigError
from ..flow import Flow
from ..reconciler import Reconciler
from ..store import EVENT_DEDUP_WINDOW
from ..store.database import display_url
from ..store.prune import KINDS, Pruned, prune
from .base import Target, UsageFailure, app_flow, main, open_store, progress, store_option

__all__ = ["migrate", "prune_store"]


@main.command()
@store_option
@click.pass_context
def migrate(ctx: click.Context, store_url: str | None) -> None:
    """Create or upgrade the store's tables (safe to run again, and from several hosts)."""
    store = open_store(ctx, store_url, existing=False)
    before, after = store.migrate()
    where = display_url(store.url)
    if before is None:
        click.echo(f"created the celeryflow store at {where}, at revision {after}")
    elif before == after:
        click.echo(f"the celeryflow store at {where} is already at revision {after}")
    else:
        click.echo(f"upgraded the celeryflow store at {where} from revision {before} to {after}")


PRUNED_NAMES = {
    "waits": "waiter rows",
    "flow_keys": "flow-control keys",
    "cron_ticks": "cron ticks",
}


def _pruned_line(verb: str, pruned: Pruned, floors: dict[str, Any] | None) -> str:
    counts = pruned.as_dict()
    line = f"{verb} " + ", ".join(f"{counts[k]} {PRUNED_NAMES.get(k, k)}" for k in KINDS)
    return line if floors is not None else line + " (cron ticks: pass -A to prune them)"


@main.command("prune")
@store_option
@click.option(
    "--older-than",
    default=None,
    metavar="DURATION",
    help="Remove runs that ended, and events received, before this long ago (30d, 12h...); "
    "default: the -A app's retention.",
)
@click.option("--dry-run", is_flag=True, help="Only count what would be removed.")
@click.pass_context
def prune_store(
    ctx: click.Context, store_url: str | None, older_than: str | None, dry_run: bool
) -> None:
    """Remove ended runs (with their steps and waiters), events past the retention
    and the dedup window that no run refers to, and expired flow-control keys, in
    batches of 500 rows, as the workers' reconciler does. Queued, running, sleeping
    and waiting runs are never touched. Cron ticks only with -A (the app's schedules
    say which ticks are history)."""
    target: Target = ctx.find_object(Target) or Target(None, None)
    flow: Flow | None = None
    if target.app and not (store_url or target.store_url):
        flow = app_flow(ctx)
    if older_than is not None:
        try:
            age = parse_duration(older_than, "--older-than")
        except ConfigError as exc:
            raise UsageFailure(str(exc)) from None
    elif flow is not None and flow.settings.retention is not None:
        age = flow.settings.retention
    else:
        raise UsageFailure("prune needs --older-than (e.g. 30d), or -A with a Flow's retention")
    store = open_store(ctx, store_url)
    now = utcnow()
    dedup = flow.settings.dedup_window if flow is not None else EVENT_DEDUP_WINDOW
    floors = Reconciler(flow).cron_floors(now) if flow is not None else None
    counted = prune(
        store, now=now, older_than=age, dedup_window=dedup, cron_floors=floors, dry_run=True
    )
    if dry_run:
        click.echo(_pruned_line("would remove", counted, floors))
        return
    with progress(counted.total(), "pruning") as bar:
        done = prune(
            store,
            now=now,
            older_than=age,
            dedup_window=dedup,
            cron_floors=floors,
            progress=lambda _kind, n: bar.update(n),
        )
    click.echo(_pruned_line("removed", done, floors))
