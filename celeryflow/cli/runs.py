"""Commands on runs: ``runs`` (the list), ``run`` (one run's step trace), ``cancel``
and ``replay`` (one run, or every run a filter selects)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from ..durations import utcnow
from ..errors import CeleryflowError
from ..runs import RunStatus
from ..store import Store
from ..store import views as v
from ..store.admin import cancellable_statuses
from .base import (
    Failure,
    UsageFailure,
    main,
    open_store,
    parse_statuses,
    parse_when,
    progress,
    require_flow,
    store_option,
)
from .table import clip, echo_json, print_table, short_duration, short_time

__all__ = ["cancel", "list_runs", "replay", "show_run"]

CANCEL_WORDS = ("cancel", "cancelling", "cancelled")
REPLAY_WORDS = ("replay", "replaying", "replayed")
RUN_HEADERS = ("RUN", "FUNCTION", "STATUS", "EVENT", "CREATED", "DURATION", "ERROR")


def run_cells(run: v.RunRow) -> list[str]:
    return [
        run.id,
        run.function_id,
        run.status.value,
        run.event_name or "-",
        short_time(run.created_at),
        short_duration(run.duration),
        clip(run.error, 60),
    ]


def filter_options(fn: Any) -> Any:
    """The options that select runs, shared by runs, cancel and replay."""
    options = [
        click.option("--function", "function_id", default=None, help="Runs of this function."),
        click.option(
            "--status",
            "status",
            multiple=True,
            help="Runs in this state (repeat it, or a,b,c).",
        ),
        click.option("--event", "event_name", default=None, help="Runs started by this event."),
        click.option(
            "--since", default=None, metavar="WHEN", help="Created since: 1h, 7d, or an ISO time."
        ),
        click.option("--until", default=None, metavar="WHEN", help="Created before this."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def build_filter(
    function_id: str | None,
    status: tuple[str, ...],
    event_name: str | None,
    since: str | None,
    until: str | None,
) -> v.RunFilter:
    return v.RunFilter(
        function_id=function_id,
        statuses=parse_statuses(status),
        event_name=event_name,
        since=parse_when(since, "--since"),
        until=parse_when(until, "--until"),
    )


@main.command("runs")
@store_option
@filter_options
@click.option("--limit", default=20, show_default=True, help="At most this many (up to 1000).")
@click.option("--after", default=None, metavar="CURSOR", help="The next page (printed below one).")
@click.option("--json", "as_json", is_flag=True, help="JSON: the runs and the next cursor.")
@click.pass_context
def list_runs(
    ctx: click.Context,
    store_url: str | None,
    function_id: str | None,
    status: tuple[str, ...],
    event_name: str | None,
    since: str | None,
    until: str | None,
    limit: int,
    after: str | None,
    as_json: bool,
) -> None:
    """List runs, newest first."""
    where = build_filter(function_id, status, event_name, since, until)
    cursor = v.decode_cursor(after) if after else None
    store = open_store(ctx, store_url)
    page = v.list_runs(store, where, limit=limit, after=cursor)
    following = v.encode_cursor(page.next_cursor) if page.next_cursor else None
    if as_json:
        echo_json({"runs": [r.as_json() for r in page.rows], "next": following})
        return
    print_table(RUN_HEADERS, [run_cells(r) for r in page.rows])
    if following:
        click.echo(f"more: --after {following}", err=True)


def _step_detail(step: v.StepRow) -> str:
    parts = []
    if step.wait is not None:
        match = (
            f" {step.wait.match_field}=={step.wait.match_value}" if step.wait.match_field else ""
        )
        cond = f" if {step.wait.condition}" if step.wait.condition else ""
        parts.append(f"waits for {step.wait.event_name}{match}{cond}")
        if step.wait.expires_at:
            parts.append(f"until {short_time(step.wait.expires_at)}")
    elif step.wake_at is not None:
        parts.append(f"wakes {short_time(step.wake_at)}")
    if step.child_run_ids:
        parts.append("runs " + ", ".join(step.child_run_ids))
    if step.error:
        parts.append(clip(step.error, 80))
    return "; ".join(parts) or "-"


def _steps_table(steps: list[v.StepRow]) -> None:
    print_table(
        ("#", "STEP", "KIND", "STATUS", "ATTEMPTS", "STARTED", "DURATION", "DETAIL"),
        [
            [
                s.position,
                s.name if s.name == s.key else f"{s.name} ({s.key})",
                s.kind,
                s.status,
                s.attempts,
                short_time(s.started_at),
                short_duration(s.ended_at - s.started_at if s.ended_at and s.started_at else None),
                _step_detail(s),
            ]
            for s in steps
        ],
    )


@main.command("run")
@store_option
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="The run, its steps and waiters as JSON.")
@click.pass_context
def show_run(ctx: click.Context, store_url: str | None, run_id: str, as_json: bool) -> None:
    """Show one run and its step trace (RUN_ID may be an unambiguous prefix)."""
    store = open_store(ctx, store_url)
    detail = v.run_detail(store, store.run_id_for(run_id))
    if as_json:
        echo_json(detail.as_json())
        return
    run = detail.run
    fields = [
        ("run", run.id),
        ("function", run.function_id),
        ("status", run.status.value + (f" (attempt {run.attempt})" if run.attempt > 1 else "")),
        ("event", f"{run.event_name or '-'} {run.event_id or ''}".strip()),
        ("created", short_time(run.created_at)),
        ("started", short_time(run.started_at)),
        ("ended", short_time(run.ended_at)),
        ("duration", short_duration(run.duration)),
    ]
    if detail.wake_at is not None:
        fields.append(("wakes", short_time(detail.wake_at)))
    if run.parent_run_id:
        branch = f" branch {detail.branch}" if detail.branch is not None else ""
        fields.append(("parent", f"{run.parent_run_id} step {detail.parent_step}{branch}"))
    if run.error:
        fields.append(("error", run.error))
    for name, value in fields:
        click.echo(f"{name + ':':<10}{value}")
    click.echo("")
    if not detail.steps:
        click.echo("no steps recorded")
    else:
        _steps_table(detail.steps)
    cancels = [w for w in detail.waits if w.kind == "cancel"]
    if cancels:
        click.echo("")
        for w in cancels:
            match = f" {w.match_field}=={w.match_value}" if w.match_field else ""
            click.echo(f"cancelled by {w.event_name}{match}")


def describe(where: v.RunFilter, statuses: bool = True) -> str:
    """`` of 'fn' in failed since ...``: what a filter selects, for the result lines."""
    parts = []
    if where.function_id is not None:
        parts.append(f"of {where.function_id!r}")
    if where.event_name is not None:
        parts.append(f"from {where.event_name!r} events")
    if statuses and where.statuses:
        parts.append("in " + "/".join(RunStatus(s).value for s in where.statuses))
    if where.since is not None:
        parts.append(f"since {short_time(where.since)}")
    return "".join(" " + p for p in parts)


def _bulk(
    store: Store,
    where: v.RunFilter,
    shown: str,
    verb: tuple[str, str, str],
    act: Callable[[str], bool],
    *,
    dry_run: bool,
    yes: bool,
) -> int:
    """Count the runs ``where`` selects, confirm, then ``act`` on each (a page at a
    time, with a progress bar); returns how many ``act`` did, -1 if it did not try."""
    do, doing, done_word = verb
    count = v.count_runs(store, where)
    if dry_run or count == 0:
        click.echo(f"{count} run(s){shown} match; none {done_word}")
        return -1
    if not yes:
        click.confirm(f"{do} {count} run(s){shown}?", abort=True)
    done = 0
    with progress(count, doing) as bar:
        for rows in v.iter_runs(store, where):
            for row in rows:
                done += act(row.id)
                bar.update(1)
    return done


def _one_or_filter(run_id: str | None, where: v.RunFilter, dry_run: bool, yes: bool) -> None:
    chosen = any([where.function_id, where.statuses, where.event_name, where.since, where.until])
    if (run_id is None) == (not chosen):
        raise UsageFailure(
            "give a RUN_ID or a filter (--function, --status, --event, --since, --until)"
        )
    if run_id is not None and (dry_run or yes):
        raise UsageFailure("--dry-run and --yes go with a filter")


@main.command("cancel")
@store_option
@click.argument("run_id", required=False)
@filter_options
@click.option("--dry-run", is_flag=True, help="With a filter: only count the runs.")
@click.option("--yes", is_flag=True, help="With a filter: do not ask for confirmation.")
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
    status: tuple[str, ...],
    event_name: str | None,
    since: str | None,
    until: str | None,
    dry_run: bool,
    yes: bool,
    keep_children: bool,
) -> None:
    """Cancel the run RUN_ID (a prefix will do), or every unfinished run a filter
    selects: a parked run at once, a running one at its next step, and the runs each
    started that are still going (its step.invoke children and parallel branches),
    unless --keep-children. The function need not exist any more (a removed one's runs
    are retired so)."""
    where = build_filter(function_id, status, event_name, since, until)
    _one_or_filter(run_id, where, dry_run, yes)
    store = open_store(ctx, store_url)
    now = utcnow()
    if run_id is not None:
        full = store.run_id_for(run_id)
        if store.cancel(full, now, children=not keep_children):
            click.echo(f"cancelled run {full}")
        else:
            click.echo(f"run {full} had already ended ({store.get_run(full).status.value})")
        return
    try:
        statuses = cancellable_statuses(list(where.statuses) or None)
    except CeleryflowError as exc:
        raise UsageFailure(f"--status: {exc}") from None
    shown = describe(where)
    where = v.RunFilter(**{**where.__dict__, "statuses": statuses, "until": where.until or now})
    done = _bulk(
        store,
        where,
        shown,
        CANCEL_WORDS,
        lambda i: store.cancel(i, now, children=not keep_children),
        dry_run=dry_run,
        yes=yes,
    )
    if done >= 0:
        click.echo(f"cancelled {done} run(s){shown}")


@main.command("replay")
@store_option
@click.argument("run_id", required=False)
@filter_options
@click.option("--dry-run", is_flag=True, help="With a filter: only count the runs.")
@click.option("--yes", is_flag=True, help="With a filter: do not ask for confirmation.")
@click.pass_context
def replay(
    ctx: click.Context,
    store_url: str | None,
    run_id: str | None,
    function_id: str | None,
    status: tuple[str, ...],
    event_name: str | None,
    since: str | None,
    until: str | None,
    dry_run: bool,
    yes: bool,
) -> None:
    """Start a new run of the same function with the same event(s), for the run
    RUN_ID or every run a filter selects (typically --status failed --since 1h). The
    old run stays as it was; the new one starts from its first step. Needs -A."""
    where = build_filter(function_id, status, event_name, since, until)
    _one_or_filter(run_id, where, dry_run, yes)
    flow = require_flow(ctx, "replay")
    store = open_store(ctx, store_url)
    if run_id is not None:
        full = store.run_id_for(run_id)
        old = store.get_run(full)
        if old.function_id not in flow.functions:
            raise Failure(f"run {full}: the app has no function {old.function_id!r} to replay")
        click.echo(f"replayed run {full} as {flow.replay(full)}")
        return
    # the replays are newer than `until`, so the walk never meets them
    shown = describe(where)
    where = v.RunFilter(**{**where.__dict__, "until": where.until or utcnow()})
    missing: set[str] = set()
    new: list[str] = []

    def one(old: str) -> bool:
        function = store.peek(old)
        if function is None or function["function_id"] not in flow.functions:
            missing.add(function["function_id"] if function is not None else old)
            return False
        new.append(flow.replay(old))
        return True

    done = _bulk(store, where, shown, REPLAY_WORDS, one, dry_run=dry_run, yes=yes)
    if done >= 0:
        click.echo(f"replayed {done} run(s){shown}")
    if missing:
        raise Failure(
            f"not replayed: the app has no function {', '.join(sorted(map(repr, missing)))}"
        )
