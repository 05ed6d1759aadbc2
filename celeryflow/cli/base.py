"""The ``celeryflow`` group and what every command shares: where the store is (the
``-A`` app's, ``--store``, ``$CELERYFLOW_STORE``), one-line errors, and the parsing
of run states and times."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import click

from ..durations import parse_duration, utcnow
from ..errors import CeleryflowError, ConfigError
from ..flow import Flow, FlowSettings
from ..runs import RunStatus
from ..store import Store
from ..store.database import display_url, sqlite_path, store_error_line
from ..tasks import load_flow

__all__ = [
    "DISTRIBUTION",
    "Failure",
    "Target",
    "UsageFailure",
    "app_flow",
    "distribution_version",
    "main",
    "open_store",
    "parse_statuses",
    "parse_when",
    "progress",
    "require_flow",
    "store_option",
]

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
    names = metadata.packages_distributions().get("celeryflow", [])
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
    """Where the command looks: the -A app, the --store URL (and the app's Flow,
    once loaded)."""

    app: str | None
    store_url: str | None
    flow: Flow | None = field(default=None, repr=False)


def store_option(fn: Any) -> Any:
    return click.option(
        "--store",
        "store_url",
        default=None,
        metavar="URL",
        help="SQLAlchemy URL of the store (instead of the app's).",
    )(fn)


def _target(ctx: click.Context) -> Target:
    target: Target | None = ctx.find_object(Target)
    return target or Target(None, None)


def app_flow(ctx: click.Context) -> Flow | None:
    """The Flow of the -A app (imported once), or None without -A."""
    target = _target(ctx)
    if target.flow is None and target.app:
        target.flow = load_flow(target.app)
    return target.flow


def require_flow(ctx: click.Context, what: str) -> Flow:
    """The -A app's Flow; a usage error naming ``what`` needs it otherwise."""
    flow = app_flow(ctx)
    if flow is None:
        raise UsageFailure(f"{what} needs -A/--app (the Celery app with the Flow)")
    return flow


def open_store(ctx: click.Context, store_url: str | None, *, existing: bool = True) -> Store:
    """The store to use. ``existing``: a SQLite file that is not there is an error,
    not a new empty store (only ``migrate`` creates one)."""
    target = _target(ctx)
    url = store_url or target.store_url
    settings = FlowSettings()
    if url is None and target.app:
        flow = app_flow(ctx)
        assert flow is not None
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


def parse_statuses(values: Iterable[str], option: str = "--status") -> list[RunStatus]:
    """``--status failed --status queued`` or ``--status failed,queued``."""
    chosen: list[RunStatus] = []
    for value in values:
        for part in filter(None, (p.strip() for p in value.split(","))):
            try:
                chosen.append(RunStatus(part))
            except ValueError:
                raise UsageFailure(
                    f"{option} {part!r} is not a run state; one of "
                    f"{', '.join(s.value for s in RunStatus)}"
                ) from None
    return list(dict.fromkeys(chosen))


def parse_when(value: str | None, option: str) -> datetime | None:
    """A time: ``1h``/``30m``/``7d`` ago, or an ISO date/time (UTC unless it says)."""
    if value is None:
        return None
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        try:
            return utcnow() - parse_duration(value, option)
        except ConfigError:
            raise UsageFailure(
                f"{option} {value!r}: give a duration ago (30m, 12h, 7d) or an ISO time "
                "(2026-12-01T09:00)"
            ) from None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)


@contextmanager
def progress(length: int, label: str) -> Iterator[Any]:
    """click's progress bar, on stderr so stdout holds only the result lines."""
    bar: Any = click.progressbar(length=length, label=label, file=sys.stderr)
    with bar as shown:
        yield shown


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
