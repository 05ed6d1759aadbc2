"""The ``celeryflow`` command (click, like Celery's own CLI)."""

from __future__ import annotations

import json
import os

import click

from .durations import parse_duration, utcnow
from .errors import ConfigError
from .flow import DEFAULT_STORE
from .store import EVENT_DEDUP_WINDOW, Store
from .store.prune import KINDS, Pruned, prune

__all__ = ["main"]

store_option = click.option(
    "--store",
    "store_url",
    default=lambda: os.environ.get("CELERYFLOW_STORE", DEFAULT_STORE),
    show_default="$CELERYFLOW_STORE or sqlite:///celeryflow.db",
    help="SQLAlchemy URL of the store.",
)


@click.group()
def main() -> None:
    """Durable workflows on Celery."""


@main.command()
@store_option
def migrate(store_url: str) -> None:
    """Create or upgrade the store's tables (safe to run again, and from several hosts)."""
    store = Store(store_url, auto_migrate=False)
    store.migrate()
    click.echo(f"store at {store.engine.url.render_as_string(hide_password=True)} is up to date")


@main.command("runs")
@store_option
@click.option("--function", "function_id", default=None, help="Only runs of this function.")
@click.option("--status", default=None, help="Only runs in this state.")
@click.option("--limit", default=20, show_default=True)
def list_runs(store_url: str, function_id: str | None, status: str | None, limit: int) -> None:
    """List runs, newest first."""
    store = Store(store_url, auto_migrate=False)
    for run in store.list_runs(function_id=function_id, status=status, limit=limit):
        click.echo(f"{run.id}  {run.status.value:<9}  {run.function_id}  {run.created_at:%F %T}")


@main.command("run")
@store_option
@click.argument("run_id")
def show_run(store_url: str, run_id: str) -> None:
    """Show one run and its steps as JSON."""
    store = Store(store_url, auto_migrate=False)
    click.echo(json.dumps(store.get_run(run_id).model_dump(mode="json"), indent=2))


PRUNED_NAMES = {
    "waits": "waiter rows",
    "flow_keys": "flow-control keys",
    "cron_ticks": "cron ticks",
}


def _pruned_line(verb: str, pruned: Pruned) -> str:
    counts = pruned.as_dict()
    return f"{verb} " + ", ".join(f"{counts[k]} {PRUNED_NAMES.get(k, k)}" for k in KINDS)


@main.command("prune")
@store_option
@click.option(
    "--older-than",
    default="7d",
    show_default=True,
    help="Remove runs that ended, and events received, before this long ago (30d, 12h...).",
)
@click.option("--dry-run", is_flag=True, help="Count what would be removed; remove nothing.")
def prune_store(store_url: str, older_than: str, dry_run: bool) -> None:
    """Remove ended runs (with their steps), unused events past the 24 h dedup window
    and expired flow-control keys, in batches of 500 rows, as the reconciler does.
    Live runs are never touched. Cron ticks are pruned by the workers, which know
    the schedules."""
    try:
        age = parse_duration(older_than, "--older-than")
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from None
    store = Store(store_url, auto_migrate=False)
    now = utcnow()
    counted = prune(store, now=now, older_than=age, dedup_window=EVENT_DEDUP_WINDOW, dry_run=True)
    if dry_run:
        click.echo(_pruned_line("would remove", counted))
        return
    with click.progressbar(length=counted.total(), label="pruning") as bar:
        done = prune(
            store,
            now=now,
            older_than=age,
            dedup_window=EVENT_DEDUP_WINDOW,
            progress=lambda _kind, n: bar.update(n),
        )
    click.echo(_pruned_line("removed", done))


if __name__ == "__main__":
    main()
