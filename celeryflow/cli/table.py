"""Plain-text output: aligned columns under a header, short times and durations."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import click

__all__ = ["ago", "clip", "echo_json", "print_table", "short_duration", "short_time"]


def short_time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


def short_duration(value: timedelta | None) -> str:
    """``850ms``, ``12.3s``, ``4m05s``, ``2h10m``, ``3d04h``; ``-`` for None."""
    if value is None:
        return "-"
    seconds = value.total_seconds()
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def ago(value: datetime | None, now: datetime) -> str:
    if value is None:
        return "never"
    # a stamp written by another host (or after `now` was taken) may be a bit ahead
    return f"{short_duration(max(now - value, timedelta(0)))} ago"


def clip(text: str | None, width: int) -> str:
    """One line of at most ``width`` characters (``-`` for nothing)."""
    if not text:
        return "-"
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Columns padded to their widest cell; the last one is not padded."""
    cells = [[str(c) for c in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        padded = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        click.echo("  ".join([*padded, row[-1]]).rstrip())


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))
