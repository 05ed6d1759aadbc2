"""The ``celeryflow`` command (click, like Celery's own CLI)."""

from __future__ import annotations

import json
import os

import click

from .flow import DEFAULT_STORE
from .store import Store

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


if __name__ == "__main__":
    main()
