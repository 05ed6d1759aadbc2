"""The ``celeryflow`` command (click, like Celery's own CLI).

The store is the one of the Celery app given with ``-A/--app`` (found as ``celery -A``
finds it, and its Flow's settings apply), or ``--store URL``, or ``$CELERYFLOW_STORE``;
with none of them the command says so. Every error is one line and a non-zero exit
(2 for a usage mistake), never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import click

from .durations import parse_duration, utcnow
from .errors import CeleryflowError, ConfigError
from .flow import Flow, FlowSettings
from .reconciler import Reconciler
from .runs import RunStatus
from .store import EVENT_DEDUP_WINDOW, Store
from .store.admin import cancellable_statuses
from .store.database import display_url, sqlite_path, store_error_line
from .store.prune import KINDS, Pruned, prune
from .tasks import load_flow

__all__ = ["DISTRIBUTION", "main"]

DISTRIBUTION = "celeryflow-engine"


class Failure(click.ClickException):
    """One line on stderr, exit code 1."""


class UsageFailure(click.ClickException):
    """One line on stderr, exit code 2 (as click's usage errors, without the usage)."""

    exit_code = 2


class _Group(click.Group):
    """Turns celeryflow's and the store's errors into one line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except CeleryflowError as exc:
            raise Failure(str(exc)) from None
        except Exception as exc:
            line = store_error_line(exc)
            if line is None:
                raise
            raise Failure(line) from None


def distribution_version() -> str:
    """``celeryflow-engine x.y.z``: the distribution that installed this package."""
    names = metadata.packages_distributions().get(__package__ or "celeryflow", [])
    name = DISTRIBUTION if DISTRIBUTION in names or not names else names[0]
    try:
        return f"{name} {metadata.version(name)}"
    except metadata.PackageNotFoundError:
        return f"{name} (not installed)"


def _show_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(distribution_version())
        ctx.exit()


@dataclass
class Target:
    """Where the command looks: the -A app, the --store URL."""

    app: str | None
    store_url: str | None


def store_option(fn: Any) -> Any:
    return click.option(
        "--store",
        "store_url",
        default=None,
        metavar="URL",
        help="SQLAlchemy URL of the store (instead of the app's).",
    )(fn)


def open_store(ctx: click.Context, store_url: str | None, *, existing: bool = True) -> Store:
    """The store to use. ``existing``: a SQLite file that is not there is an error,
    not a new empty store (only ``migrate`` creates one)."""
    target: Target = ctx.find_object(Target) or Target(None, None)
    url = store_url or target.store_url
    settings = FlowSettings()
    if url is None and target.app:
        flow: Flow = load_flow(target.app)
        url, settings = flow.store.url, flow.settings
    url = url or os.environ.get("CELERYFLOW_STORE")
    if not url:
        raise UsageFailure(
            "no store given: pass -A/--app with the Celery app that has the Flow, "
            "or --store URL, or set $CELERYFLOW_STORE"
        )
    store = Store(
        url,
        auto_migrate=False,
        connect_timeout=settings.connect_timeout,
        statement_timeout=settings.statement_timeout,
    )
    path = sqlite_path(url)
    if existing and path and path != ":memory:" and not Path(path).exists():
        raise Failure(
            f"no celeryflow store at {display_url(url)}: {Path(path).absolute()} does not "
            "exist (check -A/--store, or run `celeryflow migrate` to create it)"
        )
    return store


@click.group(cls=_Group)
@click.option(
    "-A",
    "--app",
    "app",
    envvar="CELERY_APP",
    default=None,
    metavar="APP",
    help="The Celery app with the Flow, as for `celery -A` (its store is used).",
)
@click.option(
    "--store",
    "store_url",
    default=None,
    metavar="URL",
    help="SQLAlchemy URL of the store (instead of the app's; else $CELERYFLOW_STORE).",
)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_show_version,
    help="Show the version and exit.",
)
@click.pass_context
def main(ctx: click.Context, app: str | None, store_url: str | None) -> None:
    """Durable workflows on Celery."""
    ctx.obj = Target(app, store_url)


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


def _status(value: str | None) -> RunStatus | None:
    if value is None:
        return None
    try:
        return RunStatus(value)
    except ValueError:
        raise UsageFailure(
            f"--status {value!r} is not a run state; one of {', '.join(s.value for s in RunStatus)}"
        ) from None


@main.command("runs")
@store_option
@click.option("--function", "function_id", default=None, help="Only runs of this function.")
@click.option("--status", default=None, help="Only runs in this state.")
@click.option("--limit", default=20, show_default=True)
@click.pass_context
def list_runs(
    ctx: click.Context,
    store_url: str | None,
    function_id: str | None,
    status: str | None,
    limit: int,
) -> None:
    """List runs, newest first."""
    state = _status(status)
    store = open_store(ctx, store_url)
    for run in store.list_runs(function_id=function_id, status=state, limit=limit):
        click.echo(f"{run.id}  {run.status.value:<9}  {run.function_id}  {run.created_at:%F %T}")


@main.command("run")
@store_option
@click.argument("run_id")
@click.pass_context
def show_run(ctx: click.Context, store_url: str | None, run_id: str) -> None:
    """Show one run and its steps as JSON (RUN_ID may be an unambiguous prefix)."""
    store = open_store(ctx, store_url)
    run = store.get_run(store.run_id_for(run_id))
    click.echo(json.dumps(run.model_dump(mode="json"), indent=2))


@main.command("cancel")
@store_option
@click.argument("run_id", required=False)
@click.option("--function", "function_id", default=None, help="Cancel every unfinished run of it.")
@click.option("--status", default=None, help="With --function: only runs in this state.")
@click.option("--dry-run", is_flag=True, help="With --function: only count them.")
@click.option("--yes", is_flag=True, help="With --function: do not ask for confirmation.")
@click.option(
    "--keep-children",
    is_flag=True,
    help="Leave the runs they started (step.invoke children, parallel branches) running.",
)
@click.pass_context
def cancel(
    ctx: click.Context,
    store_url: str | None,
    run_id: str | None,
    function_id: str | None,
    status: str | None,
    dry_run: bool,
    yes: bool,
    keep_children: bool,
) -> None:
    """Cancel the run RUN_ID (a prefix will do), or with --function every run of a
    function that has not ended: a parked run at once, a running one at its next step,
    and the runs each started that are still going (its step.invoke children and
    parallel branches), unless --keep-children.
    The function need not exist any more (a removed one's runs are retired so)."""
    if (run_id is None) == (function_id is None):
        raise UsageFailure("cancel takes a RUN_ID or --function ID (one of the two)")
    if function_id is None and (status or dry_run or yes):
        raise UsageFailure("--status, --dry-run and --yes go with --function")
    store = open_store(ctx, store_url)
    if run_id is not None:
        full = store.run_id_for(run_id)
        if store.cancel(full, utcnow(), children=not keep_children):
            click.echo(f"cancelled run {full}")
        else:
            click.echo(f"run {full} had already ended ({store.get_run(full).status.value})")
        return
    assert function_id is not None
    try:
        statuses = cancellable_statuses(status)
    except CeleryflowError as exc:
        raise UsageFailure(f"--status: {exc}") from None
    count = store.count_runs(function_id, statuses)
    states = "/".join(s.value for s in statuses)
    if dry_run or count == 0:
        click.echo(f"{count} run(s) of {function_id!r} are {states}; none cancelled")
        return
    if not yes:
        click.confirm(f"cancel {count} {states} run(s) of {function_id!r}?", abort=True)
    done = store.cancel_runs(function_id, statuses, utcnow(), children=not keep_children)
    click.echo(f"cancelled {done} run(s) of {function_id!r}")


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
        flow = load_flow(target.app)
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
    # on stderr, so stdout holds only the result line
    bar_on_stderr: Any = click.progressbar(length=counted.total(), label="pruning", file=sys.stderr)
    with bar_on_stderr as bar:
        done = prune(
            store,
            now=now,
            older_than=age,
            dedup_window=dedup,
            cron_floors=floors,
            progress=lambda _kind, n: bar.update(n),
        )
    click.echo(_pruned_line("removed", done, floors))


if __name__ == "__main__":
    main()
