"""``celeryflow doctor``: one line per check, OK / WARN / FAIL, exit 1 on any FAIL.

The checks: the store answers and is migrated; the broker answers; workers answer a
broadcast, and which functions they run; each cron function's newest recorded slot
is the one expected; a reconciler passed recently (each pass stamps a heartbeat row
in the store); no run has been queued longer than ``--stuck-after``, with what
explains the ones that have."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import click

from ..durations import parse_duration, utcnow
from ..errors import CeleryflowError, ConfigError
from ..flow import Flow
from ..store import Store
from ..store.database import display_url, store_error_line
from ..store.health import last_ticks, seen, stuck
from ..store.migrate import head_revision
from ..tasks import broker_error, worker_functions
from .base import Failure, UsageFailure, app_flow, main, open_store, store_option
from .table import ago, short_duration, short_time

__all__ = ["doctor"]

OK, WARN, FAIL = "OK", "WARN", "FAIL"


@dataclass
class Report:
    failed: bool = False
    lines: list[str] = field(default_factory=list)

    def add(self, level: str, what: str, text: str) -> None:
        self.failed |= level == FAIL
        click.echo(f"{level:<4}  {what:<10}  {text}")


def _store(report: Report, store: Store) -> bool:
    try:
        store.check()
    except (CeleryflowError, Exception) as exc:
        line = str(exc) if isinstance(exc, CeleryflowError) else store_error_line(exc)
        if line is None:
            raise
        report.add(FAIL, "store", line)
        return False
    report.add(OK, "store", f"{display_url(store.url)} answers, at revision {head_revision()}")
    return True


def _workers(report: Report, flow: Flow, timeout: float) -> dict[str, list[str]] | None:
    """The broker and the workers; None if the broker does not answer."""
    error = broker_error(flow.app, timeout)
    if error is not None:
        report.add(FAIL, "broker", error)
        report.add(FAIL, "workers", "not asked: the broker does not answer")
        return None
    report.add(OK, "broker", "answers")
    workers = worker_functions(flow.app, timeout)
    if not workers:
        report.add(FAIL, "workers", f"none answered within {timeout:g}s: no run will execute")
        return workers
    for name, functions in sorted(workers.items()):
        report.add(OK, "workers", f"{name}: {len(functions)} function(s)")
    known = {f for functions in workers.values() for f in functions}
    unknown = sorted(set(flow.functions) - known)
    if unknown:
        report.add(WARN, "workers", f"no worker runs {', '.join(unknown)} (deploy lagging?)")
    return workers


def _reconciler(report: Report, store: Store, flow: Flow | None, now: datetime) -> None:
    beats = seen(store, "reconciler")
    if not beats:
        report.add(FAIL, "reconciler", "no pass recorded: no worker or beat of this version ran")
        return
    interval = flow.settings.reconcile_interval if flow is not None else timedelta(seconds=30)
    late = max(interval * 3, timedelta(seconds=10))
    newest = beats[0]
    recent = [b for b in beats if now - b.seen_at <= late]
    text = f"last pass {ago(newest.seen_at, now)} by {newest.host}; {len(recent)} alive"
    report.add(OK if recent else FAIL, "reconciler", text)


def _cron(report: Report, store: Store, flow: Flow, now: datetime, paused: set[str]) -> None:
    crons = {fn.id: fn for fn in flow.functions.values() if fn.crons}
    if not crons:
        return
    # a slot may take a reconciler interval (a tick interval) to be looked at
    grace = max(flow.settings.reconcile_interval, flow.settings.tick_interval) * 2
    ticks = last_ticks(store, crons)
    for function_id, fn in sorted(crons.items()):
        expected = max(t.latest_slot(now - grace) for t in fn.crons)
        last = ticks.get(function_id)
        note = " (paused: slots recorded without runs)" if function_id in paused else ""
        if last is None:
            report.add(
                FAIL, "cron", f"{function_id}: never fired (expected {short_time(expected)})"
            )
        elif last < expected:
            report.add(
                FAIL,
                "cron",
                f"{function_id}: last slot {short_time(last)}, expected {short_time(expected)}",
            )
        else:
            report.add(OK, "cron", f"{function_id}: last slot {short_time(last)}{note}")


def _stuck(
    report: Report,
    store: Store,
    flow: Flow | None,
    workers: dict[str, list[str]] | None,
    paused: set[str],
    after: timedelta,
    now: datetime,
) -> None:
    groups = stuck(store, now - after, now)
    if not groups:
        report.add(OK, "queued", f"no run queued longer than {short_duration(after)}")
        return
    known = {f for functions in (workers or {}).values() for f in functions}
    for group in groups:
        level, why = WARN, []
        if flow is not None and group.function_id not in flow.functions:
            level = FAIL
            why.append("not defined in the app")
        if workers is None and flow is not None:
            level = FAIL
            why.append("the broker is down")
        elif workers is not None and group.function_id not in known:
            level = FAIL
            why.append("no worker runs this function")
        if group.for_slot:
            why.append(f"{group.for_slot} wait for a concurrency slot")
        if group.function_id in paused:
            why.append("the function is paused (its queued runs still run)")
        if not why:
            why.append("no cause found: are workers consuming its queue?" if flow else "pass -A")
        text = (
            f"{group.function_id}: {group.count} run(s) queued since {short_time(group.oldest)}"
            f" ({'; '.join(why)})"
        )
        report.add(level, "queued", text)


@main.command("doctor")
@store_option
@click.option(
    "--stuck-after",
    default="5m",
    show_default=True,
    metavar="DURATION",
    help="A run queued longer than this is reported.",
)
@click.option("--timeout", default=2.0, show_default=True, help="Seconds to wait for answers.")
@click.pass_context
def doctor(ctx: click.Context, store_url: str | None, stuck_after: str, timeout: float) -> None:
    """Check the store, broker, workers, cron, reconciler and queued runs; one line
    per check (OK, WARN, FAIL), exit status 1 if any FAIL. Broker, workers and cron
    need -A."""
    try:
        after = parse_duration(stuck_after, "--stuck-after")
    except ConfigError as exc:
        raise UsageFailure(str(exc)) from None
    flow = app_flow(ctx)
    report = Report()
    now = utcnow()
    try:
        store = open_store(ctx, store_url)
    except Failure as exc:
        report.add(FAIL, "store", exc.message)
        ctx.exit(1)
    if not _store(report, store):
        ctx.exit(1)
    paused = set(store.paused_functions())
    workers: dict[str, list[str]] | None = {}
    if flow is not None:
        workers = _workers(report, flow, timeout)
    else:
        report.add(WARN, "broker", "not checked: pass -A to check the broker, workers and cron")
    _reconciler(report, store, flow, now)
    if flow is not None:
        _cron(report, store, flow, now, paused)
    _stuck(report, store, flow, workers if flow is not None else None, paused, after, now)
    if paused:
        report.add(WARN, "paused", ", ".join(sorted(paused)))
    if report.failed:
        ctx.exit(1)
